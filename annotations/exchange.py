"""Exports and imports of the judging store: the official TSV layout, Label Studio JSON, an offline HTML bundle.

* ``official-tsv``: the layout of the released ``PartiPromptsAllDecisions_{Alignment,Realism}.tsv`` (Prompt,
  Category, Challenge, Note, Decisions = comma-separated ret/gen/same in judge order). One panel per file
  (``Decisions_<Question>_<panel>.tsv``). Imported rows are matched to the store's items by prompt text; rows
  without an item are skipped and counted (an item without images is never created: judges could not see it).
* ``label-studio``: :mod:`annotations.label_studio` (tasks, images under neutral names, a side-by-side labelling
  config, the local-files setup through its API; its JSON and JSON_MIN exports import back).
* ``html-bundle``: a self-contained folder (``index.html``, ``judge.js``, ``items.js``, the images) a judge opens
  offline in a browser; it keeps votes under the bundle's id plus the judge's name (two bundles opened by the
  same name never share votes) and saves ``votes-<bundle>-<name>.json``, which ``import`` reads.

Votes are stored as the side the judge picked (left/right/same); exports say gen/ret/same through each
item's recorded generated-image side (:func:`annotations.store.official_vote`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from annotations.store import CHOICES, HUMAN_PANEL, JudgingStore, official_vote
from annotations.votes import VoteRow, default_votes_path, read_votes, write_votes
from gill.errors import InputError
from gill.utils.io import atomic_write_text
from gill.utils.paths import resolve_stored

logger = logging.getLogger(__name__)

FORMATS = ("official-tsv", "label-studio", "html-bundle")


def _side(vote: str, gen_side: str) -> str:
    """Official gen/ret/same -> the side the judge picked."""
    if vote == "same":
        return "same"
    other = "right" if gen_side == "left" else "left"
    return gen_side if vote == "gen" else other


# -- official TSV ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    """What an import did: votes written, records skipped (with why), and the judges it wrote for."""

    votes: int
    skipped: int = 0
    reasons: tuple[str, ...] = ()
    judges: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line for the CLI."""
        text = f"{self.votes} vote(s) by {len(self.judges)} judge(s)"
        return text + (f"; {self.skipped} skipped ({'; '.join(self.reasons[:5])})" if self.skipped else "")


def export_official_tsv(
    store: JudgingStore, out_dir: str | os.PathLike[str], complete_only: bool = False, panel: str = HUMAN_PANEL
) -> list[Path]:
    """Write ``Decisions_Alignment_<panel>.tsv`` and ``Decisions_Realism_<panel>.tsv`` (items with votes of
    ``panel``, by item id; judges in judge-id order)."""
    table = store.votes_table(complete_only=complete_only, panel=panel)
    out = Path(out_dir)
    return [
        write_votes(out / f"Decisions_{q.capitalize()}_{panel}.tsv", [entry.row(q) for entry in table])
        for q in ("alignment", "realism")
    ]


def import_official_tsv(
    store: JudgingStore,
    alignment: str | os.PathLike[str] | None = None,
    realism: str | os.PathLike[str] | None = None,
    panel: str = HUMAN_PANEL,
    judge_prefix: str = "tsv-judge-",
    overwrite: bool = False,
) -> ImportResult:
    """Import votes in the released layout (default: the shipped PartiPrompts files) onto the store's items.

    Rows are matched to items by prompt text; a row whose prompt is no item of the store is skipped and counted
    (the store never gets items without images). The n-th vote of a row is judge ``<judge_prefix><n>``'s.
    Without a realism file the realism answer is recorded as ``same``. One transaction: refused = nothing changed.
    """
    a_rows = read_votes(alignment or default_votes_path("alignment"))
    r_rows = (
        read_votes(realism) if realism else (read_votes(default_votes_path("realism")) if alignment is None else None)
    )
    if r_rows is not None:
        pairs = enumerate(zip(a_rows, r_rows, strict=False))
        problems = [f"row {i + 1}: {a.prompt!r} vs {r.prompt!r}" for i, (a, r) in pairs if a.prompt != r.prompt]
        if len(a_rows) != len(r_rows) or problems:
            raise InputError(
                "the alignment and realism files do not list the same prompts in the same order",
                [f"{len(a_rows)} vs {len(r_rows)} rows", *problems[:20]],
            )
    by_prompt = {item.prompt: item for item in store.items() if item.has_images()}
    records, skipped = [], 0
    for i, row in enumerate(a_rows):
        item = by_prompt.get(row.prompt)
        if item is None:
            skipped += 1
            continue
        for n, vote in enumerate(row.votes):
            realism_vote = r_rows[i].votes[n] if r_rows is not None and n < len(r_rows[i].votes) else "same"
            records.append(
                (f"{judge_prefix}{n + 1}", item.id, _side(vote, item.gen_side), _side(realism_vote, item.gen_side))
            )
    if not records and skipped:
        raise InputError(
            f"none of the {len(a_rows)} prompts of {alignment or default_votes_path('alignment')} is an "
            f"item of {store.path}; nothing was imported",
            [],
            hint="votes go onto judging items with images: build the candidates for these prompts first "
            "(gill annotate build --prompts FILE); to fit the decision classifier on a votes file "
            "directly, use gill decision fit --votes FILE",
        )
    written = store.import_named_votes(records, panel=panel, overwrite=overwrite) if records else 0
    reasons = (f"{skipped} prompt(s) are not items of this store (build candidates for them first)",) if skipped else ()
    logger.info(
        "imported %d votes on %d of %d prompts from the official TSV", written, len(a_rows) - skipped, len(a_rows)
    )
    return ImportResult(votes=written, skipped=skipped, reasons=reasons, judges=tuple(sorted({r[0] for r in records})))


# -- Label Studio: see annotations.label_studio (export without votes, side-by-side config, neutral image names,
# the local-files storage and a one-transaction import of its JSON and JSON_MIN exports) -------------------------

# -- offline HTML bundle --------------------------------------------------------------------------------------------

_BUNDLE_DIR = Path(__file__).parent / "bundle"


def export_html_bundle(store: JudgingStore, out_dir: str | os.PathLike[str]) -> Path:
    """A folder a judge opens offline (``index.html``): the items, their images, and the judging page.

    Items without images (votes imported on prompts that have no candidates) are left out; a judgeable item whose
    image file is missing refuses the export before anything is written. Each export gets a new bundle id.
    """
    out = Path(out_dir)
    items, copies, problems = [], [], []
    for item in store.items():
        if not item.has_images():
            continue
        entry = {"id": item.id, "prompt": item.prompt}
        for side in ("left", "right"):
            rel = item.image_for(side)
            source = resolve_stored(rel, store.workdir)
            if not source.is_file():
                problems.append(f"item {item.id}: {side} image {str(source)!r} is missing")
                continue
            name = f"{item.id:05d}-{side}{source.suffix}"
            copies.append((source, name))
            entry[side] = f"images/{name}"
        items.append(entry)
    if not items and not problems:
        problems.append(f"{store.path} has no item with images")
    if problems:
        raise InputError(
            "cannot bundle items without their images",
            problems[:50],
            hint="build the candidates first (gill annotate build, or the pipeline's candidates stage)",
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    for source, name in copies:
        shutil.copyfile(source, out / "images" / name)
    bundle_id = uuid.uuid4().hex[:12]
    payload = json.dumps({"bundle": bundle_id, "items": items}, ensure_ascii=True)
    payload = payload.replace("<", "\\u003c")  # safe inside <script>
    atomic_write_text(out / "items.js", f"window.GILL_BUNDLE = {payload};\n")
    for name in ("index.html", "judge.js"):
        shutil.copyfile(_BUNDLE_DIR / name, out / name)
    return out / "index.html"


def import_bundle_votes(
    store: JudgingStore, paths: list[str | os.PathLike[str]], panel: str = HUMAN_PANEL, *, overwrite: bool = False
) -> ImportResult:
    """Import ``votes-<bundle>-<name>.json`` files saved by the offline bundle (one transaction for all files).

    A vote that differs from the judge's vote already in the store (cast in the web app, say) is a conflict that
    refuses the import unless ``overwrite``.
    """
    records, problems = [], []
    items = {item.id for item in store.items()}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            problems.append(f"{path}: {err}")
            continue
        name = str(data.get("judge", "")).strip() if isinstance(data, dict) else ""
        votes = data.get("votes") if isinstance(data, dict) else None
        if not name:
            problems.append(f'{path}: no judge name (expected an object with "judge" and "votes")')
            continue
        if not isinstance(votes, list):
            problems.append(f'{path}: "votes" must be a list of votes, got {type(votes).__name__}')
            continue
        for v, vote in enumerate(votes):
            fields = vote if isinstance(vote, dict) else {}
            item_id, a, r = fields.get("item_id"), fields.get("alignment"), fields.get("realism")
            if (
                isinstance(item_id, bool)
                or not isinstance(item_id, int)
                or item_id not in items
                or a not in CHOICES
                or r not in CHOICES
            ):
                problems.append(f"{path}: vote {v} {str(vote)[:120]} (unknown item or choice)")
                continue
            records.append((name, item_id, a, r))
    if problems:
        raise InputError("cannot import the bundle votes; nothing was imported", problems[:50])
    written = store.import_named_votes(records, panel=panel, overwrite=overwrite)
    return ImportResult(votes=written, judges=tuple(sorted({r[0] for r in records})))


def official_rows(store: JudgingStore, question: str = "alignment", panel: str = HUMAN_PANEL) -> list[VoteRow]:
    """The store's votes of ``panel`` as official rows (for fitting the decision classifier from judgements)."""
    return [entry.row(question) for entry in store.votes_table(panel=panel)]


__all__ = [
    "FORMATS",
    "ImportResult",
    "export_html_bundle",
    "export_official_tsv",
    "import_bundle_votes",
    "import_official_tsv",
    "official_rows",
    "official_vote",
]
