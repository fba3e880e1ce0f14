"""Exports and imports of the judging store: the official TSV layout, Label Studio JSON, an offline HTML bundle.

* ``official-tsv``: the layout of the released ``PartiPromptsAllDecisions_{Alignment,Realism}.tsv`` (Prompt,
  Category, Challenge, Note, Decisions = comma-separated ret/gen/same in judge order). Importing the shipped
  PartiPrompts votes is the embedded default, so the pipeline runs without live judges.
* ``label-studio``: tasks with annotations in Label Studio's JSON export format plus ``label_config.xml`` for
  a project with the same two questions, for teams that judge there; its JSON export imports back.
* ``html-bundle``: a self-contained folder (``index.html``, ``judge.js``, ``items.js``, the images) a judge opens
  offline in a browser; it saves ``votes-<name>.json``, which ``import`` reads.

Votes are stored as the side the judge picked (left/right/same); exports say gen/ret/same through each
item's recorded generated-image side (:func:`annotations.store.official_vote`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from annotations.store import CHOICES, JudgingStore, official_vote
from annotations.votes import VoteRow, default_votes_path, read_votes, write_votes
from gill.errors import InputError
from gill.utils.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

FORMATS = ("official-tsv", "label-studio", "html-bundle")
IMPORTED_JUDGE = "partiprompts-judge-{n}"
"""Names given to the judges of an imported official TSV (by their position in the Decisions column)."""


def _side(vote: str, gen_side: str) -> str:
    """Official gen/ret/same -> the side the judge picked."""
    if vote == "same":
        return "same"
    other = "right" if gen_side == "left" else "left"
    return gen_side if vote == "gen" else other


# -- official TSV ---------------------------------------------------------------------------------------------------


def export_official_tsv(
    store: JudgingStore, out_dir: str | os.PathLike[str], complete_only: bool = False
) -> list[Path]:
    """Write ``Decisions_Alignment.tsv`` and ``Decisions_Realism.tsv`` (items with votes, by item id)."""
    table = store.votes_table(complete_only=complete_only)
    out = Path(out_dir)
    return [write_votes(out / f"Decisions_{q.capitalize()}.tsv", [entry.row(q) for entry in table])
            for q in ("alignment", "realism")]  # fmt: skip


def import_official_tsv(store: JudgingStore, alignment: str | os.PathLike[str] | None = None,
                        realism: str | os.PathLike[str] | None = None) -> int:  # fmt: skip
    """Import votes in the released layout (default: the shipped PartiPrompts files). Returns votes written.

    Items are matched by row number (``prompt_id``, as ``gill annotate build`` numbers them); a row without an item
    becomes one with no images. The n-th vote of a row is judge ``partiprompts-judge-n``'s. Without a realism file
    the realism answer is recorded as ``same``.
    """
    a_rows = read_votes(alignment or default_votes_path("alignment"))
    r_rows = (
        read_votes(realism) if realism else (read_votes(default_votes_path("realism")) if alignment is None else None)
    )
    if r_rows is not None:
        pairs = enumerate(zip(a_rows, r_rows, strict=False))
        problems = [f"row {i + 1}: {a.prompt!r} vs {r.prompt!r}" for i, (a, r) in pairs if a.prompt != r.prompt]
        if len(a_rows) != len(r_rows) or problems:
            raise InputError("the alignment and realism files do not list the same prompts in the same order",
                             [f"{len(a_rows)} vs {len(r_rows)} rows", *problems[:20]])  # fmt: skip
    existing = {item.id: item for item in store.items()}
    new = [{"prompt_id": i, "prompt": r.prompt, "category": r.category, "challenge": r.challenge, "note": r.note,
            "gen_image": "", "ret_image": ""} for i, r in enumerate(a_rows) if i not in existing]  # fmt: skip
    if new:
        store.upsert_items(new)
    items = {item.id: item for item in store.items()}
    width = max(len(r.votes) for r in a_rows)
    judges = [store.ensure_judge(IMPORTED_JUDGE.format(n=n + 1)) for n in range(width)]
    records = []
    for i, row in enumerate(a_rows):
        side = items[i].gen_side
        for n, vote in enumerate(row.votes):
            realism_vote = r_rows[i].votes[n] if r_rows is not None and n < len(r_rows[i].votes) else "same"
            records.append((judges[n].id, i, _side(vote, side), _side(realism_vote, side)))
    written = store.import_votes(records)
    logger.info("imported %d votes on %d prompts from the official TSV", written, len(a_rows))
    return written


# -- Label Studio ---------------------------------------------------------------------------------------------------

LABEL_CONFIG = """<View>
  <Header value="$prompt"/>
  <Image name="left" value="$image_left" width="45%"/>
  <Image name="right" value="$image_right" width="45%"/>
  <Header value="Which image matches the prompt better?"/>
  <Choices name="alignment" toName="left" choice="single" required="true">
    <Choice value="Left" hotkey="1"/><Choice value="Right" hotkey="2"/><Choice value="About the same" hotkey="3"/>
  </Choices>
  <Header value="Which image is more realistic?"/>
  <Choices name="realism" toName="left" choice="single" required="true">
    <Choice value="Left" hotkey="q"/><Choice value="Right" hotkey="w"/><Choice value="About the same" hotkey="e"/>
  </Choices>
</View>
"""
_LS_CHOICE = {"left": "Left", "right": "Right", "same": "About the same"}
_LS_SIDE = {v: k for k, v in _LS_CHOICE.items()}


def export_label_studio(
    store: JudgingStore, out_dir: str | os.PathLike[str], image_root: str = "/data/local-files/?d="
) -> list[Path]:
    """``tasks.json`` (one task per item, with its annotations) and ``label_config.xml`` in ``out_dir``.

    Image urls are ``image_root`` + the path relative to the workdir (Label Studio's local-files serving:
    set ``LOCAL_FILES_DOCUMENT_ROOT`` to the workdir).
    """
    votes: dict[int, list[tuple[str, Any]]] = {}
    judges = {j.id: j.name for j in store.judges()}
    for judge_id, name in judges.items():
        for vote in store.votes_of(judge_id):
            votes.setdefault(vote.item_id, []).append((name, vote))
    tasks = []
    for item in store.items():
        annotations = [{
            "completed_by": {"email": name},
            "result": [{"from_name": q, "to_name": "left", "type": "choices",
                        "value": {"choices": [_LS_CHOICE[getattr(vote, q)]]}} for q in ("alignment", "realism")],
        } for name, vote in votes.get(item.id, [])]  # fmt: skip
        tasks.append({"id": item.id, "data": {
            "prompt": item.prompt, "category": item.category, "challenge": item.challenge,
            "image_left": image_root + item.image_for("left"), "image_right": image_root + item.image_for("right"),
            "gill_item_id": item.id, "gill_gen_side": item.gen_side}, "annotations": annotations})  # fmt: skip
    out = Path(out_dir)
    return [atomic_write_json(out / "tasks.json", tasks), atomic_write_text(out / "label_config.xml", LABEL_CONFIG)]


def import_label_studio(store: JudgingStore, path: str | os.PathLike[str]) -> int:
    """Import a Label Studio JSON export of tasks made by :func:`export_label_studio`. Returns votes written."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the Label Studio export {str(path)!r}", [str(err)]) from err
    problems, records = [], []
    items = {item.id for item in store.items()}
    for t, task in enumerate(tasks if isinstance(tasks, list) else []):
        item_id = (task.get("data") or {}).get("gill_item_id")
        if item_id not in items:
            problems.append(f"task {t}: gill_item_id {item_id!r} is not an item of this store")
            continue
        for a, ann in enumerate(task.get("annotations") or []):
            who = ann.get("completed_by")
            name = who.get("email") if isinstance(who, dict) else f"label-studio-{who}"
            answers = {
                r.get("from_name"): (r.get("value") or {}).get("choices", [None])[0] for r in ann.get("result", [])
            }
            sides = [_LS_SIDE.get(answers.get(q)) for q in ("alignment", "realism")]
            if None in sides or not name:
                problems.append(f"task {t} annotation {a}: needs a judge and both questions answered, got {answers}")
                continue
            records.append((name, int(item_id), *sides))
    if not isinstance(tasks, list):
        problems.append("the file must hold a JSON list of tasks")
    if problems:
        raise InputError(f"invalid Label Studio export {str(path)!r}", problems[:50])
    judges = {name: store.ensure_judge(name).id for name in {r[0] for r in records}}
    return store.import_votes([(judges[n], i, a, r) for n, i, a, r in records])


# -- offline HTML bundle --------------------------------------------------------------------------------------------

_BUNDLE_DIR = Path(__file__).parent / "bundle"


def export_html_bundle(store: JudgingStore, out_dir: str | os.PathLike[str]) -> Path:
    """A folder a judge opens offline (``index.html``): the items, their images, and the judging page."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items, problems = [], []
    for item in store.items():
        entry = {"id": item.id, "prompt": item.prompt}
        for side in ("left", "right"):
            rel = item.image_for(side)
            source = store.workdir / rel
            if not rel or not source.is_file():
                problems.append(f"item {item.id}: {side} image {rel!r} is missing")
                continue
            name = f"{item.id:05d}-{side}{source.suffix}"
            shutil.copyfile(source, out / "images" / name)
            entry[side] = f"images/{name}"
        items.append(entry)
    if problems:
        raise InputError("cannot bundle items without their images", problems[:50],
                         hint="build the candidates first (gill annotate build)")  # fmt: skip
    payload = json.dumps({"items": items}, ensure_ascii=True).replace("<", "\\u003c")  # safe inside <script>
    atomic_write_text(out / "items.js", f"window.GILL_BUNDLE = {payload};\n")
    for name in ("index.html", "judge.js"):
        shutil.copyfile(_BUNDLE_DIR / name, out / name)
    return out / "index.html"


def import_bundle_votes(store: JudgingStore, paths: list[str | os.PathLike[str]]) -> int:
    """Import ``votes-<name>.json`` files saved by the offline bundle. Returns votes written."""
    records, problems = [], []
    items = {item.id for item in store.items()}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            problems.append(f"{path}: {err}")
            continue
        name = str(data.get("judge", "")).strip() if isinstance(data, dict) else ""
        if not name:
            problems.append(f"{path}: no judge name")
            continue
        for v, vote in enumerate(data.get("votes", [])):
            item_id, a, r = vote.get("item_id"), vote.get("alignment"), vote.get("realism")
            if item_id not in items or a not in CHOICES or r not in CHOICES:
                problems.append(f"{path}: vote {v} {vote!r} (unknown item or choice)")
                continue
            records.append((name, int(item_id), a, r))
    if problems:
        raise InputError("cannot import the bundle votes", problems[:50])
    judges = {name: store.ensure_judge(name).id for name in {r[0] for r in records}}
    return store.import_votes([(judges[n], i, a, r) for n, i, a, r in records])


def official_rows(store: JudgingStore, question: str = "alignment") -> list[VoteRow]:
    """The store's votes as official rows (for fitting the decision classifier from live judgements)."""
    return [entry.row(question) for entry in store.votes_table()]


__all__ = [
    "FORMATS", "export_html_bundle", "export_label_studio", "export_official_tsv", "import_bundle_votes",
    "import_label_studio", "import_official_tsv", "official_rows", "official_vote",
]  # fmt: skip
