"""The report as a static web page (HELM/HEIM-style): the paper tables with their 95% intervals, the claims, the
figures, and a browser over every benchmark sample, in one folder that opens from ``file://``.

``<out>/index.html`` holds the tables and figures as plain HTML (escaped with :func:`html.escape`). The samples
live in paged script files, ``data/samples-0001.js``, ... (:data:`SAMPLES_PER_FILE` each), which the page loads
on demand by adding a ``<script>`` element (a browser forbids ``fetch`` of a ``file://`` URL), after
``data/index.js``, the facet codes of every sample, has told it which files hold the samples a filter selects.
Each file calls a global registration function, ``GILL_REPORT.page(number, samples)``; the page builds every
element with ``textContent``/``setAttribute``, never from HTML text, and the JSON in the files escapes ``<``,
``>``, ``&`` and U+2028/U+2029 (:func:`script_json`). The images the page shows (prompts' images, ground truths,
outputs, figures) are hard-linked (copied across file systems) into ``<out>/images/`` and ``<out>/figures/``, so
the folder can be moved or sent as a whole. The folder is built under a temporary name and then replaces
``<out>`` (:func:`gill.utils.io.atomic_directory`).

Everything comes from the store (``results``, ``samples``, ``claims``, ``unsupported_systems``, ``runs``) and the
figures the report stage drew; paths in the store are relative to the work folder
(:func:`gill.utils.paths.resolve_stored`).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
import re
import shutil
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flows.stages.bench_report import (
    PAPER_TABLES,
    SCENE_TABLES,
    PaperTable,
    claims_rows,
    fid_table,
    frame_rows,
    paper_table,
    retrieval_table,
)
from flows.store import query
from flows.store_views import SYSTEM_ORDER
from flows.workdir import Workdir
from gill.utils.io import atomic_directory
from gill.utils.paths import resolve_stored, to_stored

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "report_assets"
"""The page's hand-written files: ``index.html`` (a :class:`string.Template`), ``report.css``, ``report.js``."""
SAMPLES_PER_FILE = 100
"""Samples per ``data/samples-NNNN.js`` file."""
SCORE_COLUMNS = (
    ("clip_sim", "CLIP sim (higher better)"),
    ("lpips", "LPIPS (lower better)"),
    ("scene_score", "scene score"),
    ("target_rank", "rank of the true image (0: first)"),
    ("pool_size", "retrieval pool"),
)
"""The ``samples`` columns shown as a sample's scores (those that are not NULL), with their labels."""
SCENE_COLUMNS = (
    ("scene_all_ok", "all right"),
    ("scene_background_ok", "background"),
    ("scene_color_ok", "colour"),
    ("scene_cell_ok", "cell"),
    ("scene_color_cell_ok", "colour+cell"),
    ("scene_size_ok", "size"),
    ("scene_kind_ok", "kind"),
)
"""The scene metric's per-attribute scores of a sample (shown folded under its scores)."""
CLAIMS_LEGEND = (
    "holds: the two 95% intervals do not overlap (true/false) or overlap (inconclusive); holds (paired): the 95% "
    "interval of the paired per-sample difference A - B. Every column: SELECT * FROM claims"
)
_INTERVAL = re.compile(r"^(-?[\d.]+(?:e-?\d+)?) \[(-?[\d.]+(?:e-?\d+)?), (-?[\d.]+(?:e-?\d+)?)\]$")


@dataclass(frozen=True, kw_only=True)
class Section:
    """One table of the page: its anchor, title, rows (column -> formatted text) and notes under it."""

    anchor: str
    title: str
    rows: list[dict[str, Any]]
    notes: tuple[str, ...] = ()
    table: PaperTable | None = None
    """The paper table the rows follow (its metric and setting columns get a two-level header)."""


def html_index(out: str | os.PathLike[str]) -> Path:
    """The page of a report folder written by :func:`write_html_report`."""
    return Path(out) / "index.html"


def write_html_report(
    workdir: Workdir, run_id: str, figures: Sequence[tuple[str, Path]], out: str | os.PathLike[str]
) -> Path:
    """Write the report folder of benchmark run ``run_id`` at ``out`` (replacing it) and return its ``index.html``.

    ``figures``: (caption, PNG) of each figure to show, in order (the report stage's, see
    :func:`flows.stages.report.report_figures`); a missing file is left out with a warning.
    """
    database = workdir.database
    results = query(database, "SELECT * FROM results WHERE run_id = ?", [run_id])
    samples = query(database, "SELECT * FROM samples WHERE run_id = ?", [run_id])
    run = query(database, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    unsupported = query(database, "SELECT * FROM unsupported_systems WHERE run_id = ?", [run_id])
    sections = table_sections(database, results, unsupported, run_id)
    claims = claims_rows(database, run_id)
    with atomic_directory(out) as tmp:
        shown = _copy_figures(figures, tmp / "figures")
        images = ImageCopier(workdir.root, tmp)
        records = sample_records(samples.to_dict(orient="records"), images)
        _write_samples(tmp / "data", run_id, records)
        page = string.Template((ASSETS / "index.html").read_text(encoding="utf-8")).substitute(
            title=html.escape(f"GILL benchmark report: run {run_id}"),
            header=_header(run_id, run, database, workdir.root),
            toc=_toc(sections, claims, shown),
            tables="\n".join(_section_html(s) for s in sections if s.rows)
            or "<p class='empty'>No results in this run.</p>",
            claims=_claims_html(claims),
            figures=_figures_html(shown),
            n_samples=str(len(records)),
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        for name in ("report.css", "report.js"):
            shutil.copyfile(ASSETS / name, tmp / name)
        logger.info("HTML report of run %s: %d samples, %d images", run_id, len(records), images.count)
    return html_index(out)


# -- tables ---------------------------------------------------------------------------------------------------------


def table_sections(database: Path, results: Any, unsupported: Any, run_id: str) -> list[Section]:
    """The tables of :func:`flows.stages.bench_report.build_report`, in its order, as :class:`Section` s."""
    sections = [
        Section(
            anchor=f"table-{t.benchmark}",
            title=t.title,
            rows=paper_table(results, t),
            notes=table_notes(results, unsupported, t.benchmark),
            table=t,
        )
        for t in PAPER_TABLES
    ]
    scene = results[results.metric.str.startswith("scene_")]
    sections += [
        Section(anchor=f"scene-{t.benchmark}", title=t.title, rows=paper_table(scene, t), table=t) for t in SCENE_TABLES
    ]
    sections.append(
        Section(
            anchor="retrieval",
            title="Retrieval recall@k (the true image ranked among the evaluated samples' images)",
            rows=retrieval_table(results),
        )
    )
    sections.append(
        Section(
            anchor="fid",
            title="CC3M FID (clean-fid, mode clean)",
            rows=fid_table(results),
            notes=table_notes(results, unsupported, "cc3m-fid"),
        )
    )
    ablation = query(database, "SELECT * FROM table_mapper_ablation")
    if len(ablation) > 1:
        sections.append(
            Section(anchor="ablation", title="Mapper ablation (gill-gen; all runs)", rows=frame_rows(ablation))
        )
    return sections


def table_notes(results: Any, unsupported: Any, benchmark: str) -> tuple[str, ...]:
    """What the text report prints under a benchmark's table: metric models, sample counts, systems not run."""
    own = results[results.benchmark == benchmark]
    if not len(own):
        return ()
    models = sorted({f"{m}: {model}" for m, model in zip(own.metric, own.metric_model, strict=True) if model})
    notes = [f"metric models: {'; '.join(models)}"] if models else []
    notes.append(
        f"samples per cell: up to {int(own.n.max())}; skipped: {int(own.n_skipped.fillna(0).max())}; "
        f"seeds: {int(own.n_seeds.fillna(0).max())}"
    )
    mine = unsupported[unsupported.benchmark == benchmark]
    notes += [f"not run: {r.system}: {r.reason}" for r in mine.itertuples()]
    return tuple(notes)


def cell_html(value: Any) -> str:
    """One table cell: ``mean [low, high]`` as the mean and its interval in separate spans, numbers right-aligned,
    any other text escaped."""
    text = _text(value)
    match = _INTERVAL.match(text)
    if match:
        mean, low, high = (html.escape(g) for g in match.groups())
        return f'<td class="num"><span class="mean">{mean}</span> <span class="ci">[{low}, {high}]</span></td>'
    if text in ("", "-"):
        return '<td class="na">-</td>'
    css = "num" if _is_number(text) else "text"
    return f'<td class="{css}">{html.escape(text)}</td>'


def table_html(rows: Sequence[Mapping[str, Any]], table: PaperTable | None = None, *, css: str = "") -> str:
    """Rows of dicts as an HTML table; a paper table's columns under a two-level (metric, setting) header."""
    columns = list(rows[0])
    head = []
    if table is not None and len(columns) == 1 + len(table.metrics) * len(table.settings):
        first = html.escape(columns[0])
        groups = "".join(
            f'<th colspan="{len(table.settings)}" scope="colgroup">{html.escape(label)}</th>'
            for _metric, label in table.metrics
        )
        settings = "".join(
            f'<th scope="col">{html.escape(label)}</th>' for _metric in table.metrics for _s, label in table.settings
        )
        head = [f'<tr><th rowspan="2" scope="col">{first}</th>{groups}</tr>', f"<tr>{settings}</tr>"]
    else:
        head = ["<tr>" + "".join(f'<th scope="col">{html.escape(str(c))}</th>' for c in columns) + "</tr>"]
    body = []
    for row in rows:
        cells = [cell_html(row.get(c)) for c in columns]
        cells[0] = f'<th scope="row">{html.escape(_text(row.get(columns[0])))}</th>'
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="table-wrap"><table class="{css or "results"}"><thead>{"".join(head)}</thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _section_html(section: Section) -> str:
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
    return (
        f'<section class="table" id="{html.escape(section.anchor)}"><h3>{html.escape(section.title)}</h3>'
        + table_html(section.rows, section.table)
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + "</section>"
    )


def _claims_html(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p class='empty'>No claim can be checked on this run's results.</p>"
    body = table_html(rows, css="results claims")
    for verdict in ("true", "false", "inconclusive"):  # colour the verdict cells (server text, no data in it)
        body = body.replace(f'<td class="text">{verdict}</td>', f'<td class="text verdict {verdict}">{verdict}</td>')
    return body + f'<p class="notes">{html.escape(CLAIMS_LEGEND)}</p>'


def _header(run_id: str, run: Any, database: Path, root: Path) -> str:
    facts = [("run", run_id)]
    if len(run):
        r = run.iloc[0]
        facts += [
            ("checkpoint", str(resolve_stored(r.checkpoint, root)) if r.checkpoint else "-"),
            ("preset", _text(r.preset) or "-"),
            ("started (UTC)", _text(r.started_at) or "-"),
            ("git commit", _text(r.git_sha) or "-"),
        ]
    facts.append(("database", str(database)))
    return "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)


def _toc(sections: list[Section], claims: list, figures: list[tuple[str, str]]) -> str:
    links = [(s.anchor, s.title) for s in sections if s.rows]
    if claims:
        links.append(("claims", "Claims of the paper"))
    if figures:
        links.append(("figures", "Figures"))
    links.append(("samples", "Every sample"))
    return "".join(f'<li><a href="#{html.escape(a)}">{html.escape(t)}</a></li>' for a, t in links)


# -- figures --------------------------------------------------------------------------------------------------------


def _copy_figures(figures: Iterable[tuple[str, Path]], folder: Path) -> list[tuple[str, str]]:
    """Link the figures into ``folder``; (caption, URL relative to the page) of those that exist."""
    shown, names = [], set()
    for caption, path in figures:
        if not path.is_file():
            logger.warning("figure %s is missing; left out of the HTML report", path)
            continue
        name = path.name
        while name in names:
            name = f"{Path(name).stem}-{len(names)}{path.suffix}"
        names.add(name)
        link_or_copy(path, folder / name)
        shown.append((caption, f"{folder.name}/{quote(name)}"))
    return shown


def _figures_html(figures: list[tuple[str, str]]) -> str:
    if not figures:
        return "<p class='empty'>No figures (run the report without --no-plot).</p>"
    return "".join(
        f'<figure><a href="{html.escape(url)}"><img src="{html.escape(url)}" loading="lazy" '
        f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)}</figcaption></figure>'
        for caption, url in figures
    )


# -- samples --------------------------------------------------------------------------------------------------------


class ImageCopier:
    """Links the images the page shows into ``<out>/images/``, once each, and names their URLs.

    An image inside the work folder keeps its path relative to it (``images/bench/<run>/...``); one outside
    (a user's VIST folder) goes to ``images/external/<digest of its path>/<name>``.
    """

    def __init__(self, root: Path, out: Path) -> None:
        self.root = root
        self.out = out
        self._urls: dict[Path, str | None] = {}

    @property
    def count(self) -> int:
        """Images linked so far."""
        return sum(url is not None for url in self._urls.values())

    def url(self, stored: Any) -> str | None:
        """The page-relative URL of a stored path's copy (None for no path or a missing file)."""
        if not isinstance(stored, str) or not stored:
            return None
        source = resolve_stored(stored, self.root)
        if source not in self._urls:
            self._urls[source] = self._link(source)
        return self._urls[source]

    def _link(self, source: Path) -> str | None:
        if not source.is_file():
            return None
        relative = to_stored(source, self.root)
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
            relative = f"external/{digest}/{source.name}"
        link_or_copy(source, self.out / "images" / relative)
        return "images/" + quote(relative)


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` at ``dest`` (copy it where a link cannot be made, e.g. across file systems)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def sample_records(rows: Iterable[Mapping[str, Any]], images: ImageCopier) -> list[dict[str, Any]]:
    """The ``samples`` rows as the page's records, ordered by benchmark, context length, setting, sample, seed
    and system (so one sample's systems follow each other), their images linked by ``images``."""
    ordered = sorted(rows, key=_sample_order)
    return [sample_record(row, images) for row in ordered]


def sample_record(row: Mapping[str, Any], images: ImageCopier) -> dict[str, Any]:
    """One sample for the page: its identity, context (text and images), ground truth, output, scores, decision."""
    context = []
    for stored in _json_list(row.get("context_paths")):
        context.append({"name": Path(stored).name if stored else "(not found)", "url": images.url(stored)})
    scores = [[label, value] for column, label in SCORE_COLUMNS if (value := _value(row.get(column))) is not None]
    scene = [[label, value] for column, label in SCENE_COLUMNS if (value := _value(row.get(column))) is not None]
    return {
        "benchmark": _value(row.get("benchmark")),
        "setting": _value(row.get("setting")),
        "system": _value(row.get("system")),
        "seed": _value(row.get("seed")),
        "sample_id": _value(row.get("sample_id")),
        "status": _value(row.get("status")),
        "skip_reason": _value(row.get("skip_reason")),
        "prompt": _value(row.get("prompt")),
        "context_length": _value(row.get("context_length")),
        "context": context,
        "reference": images.url(_value(row.get("reference_path"))),
        "reference_name": _name(row.get("reference_path")),
        "output": images.url(_value(row.get("generated_path"))),
        "output_name": _name(row.get("generated_path")),
        "scores": scores,
        "scene": scene,
        "decision": _value(row.get("decision")),
        "p_ret": _value(row.get("p_ret")),
        "ret_key": _value(row.get("ret_key")),
    }


FACETS = ("benchmark", "setting", "system", "status")
"""The sample fields the page filters by."""


def sample_index(run_id: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What ``data/index.js`` registers: each facet's values (in order of first appearance) and, per sample, the
    codes of its values, so the page knows which data files hold the samples a filter selects."""
    values: dict[str, list[str]] = {f: [] for f in FACETS}
    codes: dict[str, dict[str, int]] = {f: {} for f in FACETS}
    rows = []
    for record in records:
        row = []
        for facet in FACETS:
            value = str(record.get(facet) or "")
            if value not in codes[facet]:
                codes[facet][value] = len(values[facet])
                values[facet].append(value)
            row.append(codes[facet][value])
        rows.append(row)
    return {
        "run_id": run_id,
        "per_file": SAMPLES_PER_FILE,
        "files": math.ceil(len(records) / SAMPLES_PER_FILE),
        "facets": list(FACETS),
        "values": values,
        "rows": rows,
    }


def samples_file(number: int) -> str:
    """The name of the ``number``-th (1-based) samples file, as the page builds it too."""
    return f"samples-{number:04d}.js"


def script_json(value: Any) -> str:
    """``value`` as JSON safe inside a script: ``<``, ``>``, ``&`` and U+2028/U+2029 escaped, so no text can close
    a ``<script>`` element or break a JavaScript string; NaN is refused."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _write_samples(folder: Path, run_id: str, records: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.js").write_text(
        f"GILL_REPORT.index({script_json(sample_index(run_id, records))});\n", encoding="utf-8"
    )
    for start in range(0, len(records), SAMPLES_PER_FILE):
        number = start // SAMPLES_PER_FILE + 1
        chunk = script_json(records[start : start + SAMPLES_PER_FILE])
        (folder / samples_file(number)).write_text(f"GILL_REPORT.page({number},{chunk});\n", encoding="utf-8")


def _sample_order(row: Mapping[str, Any]) -> tuple:
    system = str(row.get("system") or "")
    length = _value(row.get("context_length"))
    return (
        str(row.get("benchmark") or ""),
        length if isinstance(length, int | float) else math.inf,
        str(row.get("setting") or ""),
        str(row.get("sample_id") or ""),
        _value(row.get("seed")) or 0,
        SYSTEM_ORDER.index(system) if system in SYSTEM_ORDER else len(SYSTEM_ORDER),
        system,
    )


def _json_list(value: Any) -> list[str | None]:
    value = _value(value)
    if not value:
        return []
    try:
        items = json.loads(value)
    except ValueError:
        return []
    return [item if isinstance(item, str) else None for item in items] if isinstance(items, list) else []


def _name(value: Any) -> str | None:
    value = _value(value)
    return Path(value).name if isinstance(value, str) and value else None


def _value(value: Any) -> Any:
    """A plain JSON value: None for SQL NULL, NaN and pandas' NA; Python numbers for numpy's."""
    if value is None:
        return None
    try:
        if value != value:  # NaN
            return None
    except (TypeError, ValueError):  # pandas.NA refuses a truth value
        return None
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value if isinstance(value, str | int | float | bool) else str(value)


def _text(value: Any) -> str:
    value = _value(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
