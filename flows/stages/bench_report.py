"""``gill report``: the benchmark ``results`` as the GILL paper's tables, the claims, and a user's SQL.

Tables 1 (VIST) and 2 (VisDial) have one row per system and one column per (metric, context setting); each cell
is ``mean [low, high]`` with the 95% bootstrap interval. Under each table: the metric models, the sample count and
the systems that were not run, with the reason. The figures are drawn by the report stage (``flows.stages.report``)
with :mod:`eval.plots`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from flows.store import db_path, ensure_database, query, user_query
from flows.store_views import SYSTEM_ORDER
from gill.errors import InputError
from gill.utils.paths import resolve_stored

FORMATS = ("table", "markdown", "csv")


@dataclass(frozen=True, kw_only=True)
class PaperTable:
    """How one paper table lays out a benchmark's results."""

    title: str
    benchmark: str
    settings: tuple[tuple[str, str], ...]
    """(setting, column label)."""
    metrics: tuple[tuple[str, str], ...]
    """(metric, label)."""


SCENE_TABLES = (
    PaperTable(
        title="Scene metric, VIST (answer key of the synthetic world; share right, main shape)",
        benchmark="vist",
        settings=(("1cap", "1 caption"), ("5cap", "5 captions"), ("5cap4img", "5 caps, 4 images")),
        metrics=(("scene_score", "scene score"), ("scene_color_cell", "colour+cell")),
    ),
    PaperTable(
        title="Scene metric, VisDial (answer key; share right, all shapes)",
        benchmark="visdial",
        settings=(("1round", "1 round"), ("5rounds", "5 rounds"), ("10rounds", "10 rounds")),
        metrics=(("scene_score", "scene score"), ("scene_color_cell", "colour+cell")),
    ),
    PaperTable(
        title="Scene metric, CC3M validation captions (answer key; all shapes)",
        benchmark="cc3m-fid",
        settings=(("val", "val"),),
        metrics=(
            ("scene_background", "background"),
            ("scene_color", "colour"),
            ("scene_cell", "cell"),
            ("scene_size", "size"),
            ("scene_kind", "kind"),
            ("scene_all", "all right"),
            ("scene_score", "score"),
        ),
    ),
)
"""Per-attribute accuracy of the scene metric, where the benchmark data is a synthetic shapes world."""

PAPER_TABLES = (
    PaperTable(
        title="Table 1: VIST contextual image generation",
        benchmark="vist",
        settings=(("1cap", "1 caption"), ("5cap", "5 captions"), ("5cap4img", "5 caps, 4 images")),
        metrics=(("clip_sim", "CLIP sim (higher better)"), ("lpips", "LPIPS (lower better)")),
    ),
    PaperTable(
        title="Table 2: VisDial contextual image generation",
        benchmark="visdial",
        settings=(("1round", "1 round"), ("5rounds", "5 rounds"), ("10rounds", "10 rounds")),
        metrics=(("clip_sim", "CLIP sim (higher better)"), ("lpips", "LPIPS (lower better)")),
    ),
)


def latest_run(workdir: str | Path) -> str | None:
    """The most recently started benchmark run that has results, or None."""
    path = db_path(workdir)
    if not path.is_file():
        return None
    frame = query(
        path,
        "SELECT r.run_id FROM runs r WHERE EXISTS (SELECT 1 FROM results x WHERE x.run_id = r.run_id)"
        " ORDER BY r.started_at DESC LIMIT 1",
    )
    return str(frame.run_id.iloc[0]) if len(frame) else None


def cell(mean: float | None, low: float | None, high: float | None) -> str:
    """``0.612 [0.598, 0.627]``; ``-`` when missing."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _order(system: str) -> int:
    return SYSTEM_ORDER.index(system) if system in SYSTEM_ORDER else len(SYSTEM_ORDER)


def paper_table(results: Any, table: PaperTable) -> list[dict[str, str]]:
    """Rows of one paper table (system, then one formatted cell per metric and setting)."""
    own = results[results.benchmark == table.benchmark]
    rows = []
    for system in sorted(set(own.system), key=_order):
        row = {"system": system}
        for metric, label in table.metrics:
            for setting, column in table.settings:
                hit = own[(own.system == system) & (own.metric == metric) & (own.setting == setting)]
                r = hit.iloc[0] if len(hit) else None
                row[f"{label.split(' (')[0]} {column}"] = cell(*(_get(r, k) for k in ("mean", "ci_low", "ci_high")))
        rows.append(row)
    return rows


def retrieval_table(results: Any) -> list[dict[str, str]]:
    """Recall@1/5/10 of each retrieval task, setting and system, with the pool it ranks in."""
    own = results[results.metric.str.startswith("recall@")]
    rows = []
    for (benchmark, setting, system), group in own.groupby(["benchmark", "setting", "system"], sort=True):
        row = {"benchmark": benchmark, "setting": setting, "system": system}
        for k in (1, 5, 10):
            hit = group[group.metric == f"recall@{k}"]
            r = hit.iloc[0] if len(hit) else None
            row[f"R@{k}"] = cell(*(_get(r, c) for c in ("mean", "ci_low", "ci_high")))
        row["pool"] = str(int(group.pool_size.max())) if group.pool_size.notna().any() else "-"
        rows.append(row)
    return rows


def fid_table(results: Any) -> list[dict[str, str]]:
    """CC3M FID per system (interval: bootstrap over samples; seed spread as std)."""
    own = results[(results.benchmark == "cc3m-fid") & (results.metric == "fid")]
    return [
        {
            "system": r.system,
            "FID (lower better)": cell(r.mean, r.ci_low, r.ci_high),
            "n": str(r.n),
            "seeds": str(r.n_seeds),
            "seed std": "-" if _nan(r.seed_std) else f"{r.seed_std:.3f}",
            "feature model": r.metric_model,
        }
        for r in sorted(own.itertuples(), key=lambda r: _order(r.system))
    ]


def render(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """Rows of dicts as an aligned text table, GitHub markdown or CSV."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", [f"choose one of {', '.join(FORMATS)}"])
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    text = [[_text(row.get(c)) for c in columns] for row in rows]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(text)
        return buffer.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in text]
        return "\n".join(lines) + "\n"
    widths = [max(len(c), *(len(row[i]) for row in text)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in text]
    return "\n".join(lines) + "\n"


def frame_rows(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame as a list of row dicts (for :func:`render`)."""
    return frame.to_dict(orient="records")


def run_sql(workdir: str | Path, sql: str, fmt: str = "table", max_rows: int | None = None) -> str:
    """A user's read-only SQL over the workdir's database, rendered (the first ``max_rows`` rows when given)."""

    problems = []
    if not sql.strip():
        problems.append("the SQL text is empty")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0):
        problems.append(f"max_rows: must be an integer >= 0, got {max_rows!r}")
    if problems:
        raise InputError(
            "invalid SQL request", problems, hint='pass a query, e.g. gill db query --workdir W "SELECT * FROM results"'
        )
    path = _database(workdir)
    try:
        frame = user_query(path, sql)
    except duckdb.Error as err:
        raise InputError(
            "the SQL query failed",
            [str(err).splitlines()[0]],
            hint="tables: runs, samples, results, unsupported_systems; views: table1_vist, "
            "table2_visdial, table_retrieval, table_cc3m_fid, table_mapper_ablation, "
            "context_effect (see eval/README.md)",
        ) from err
    rows = frame_rows(frame)
    if max_rows is not None and len(rows) > max_rows:
        return render(rows[:max_rows], fmt) + f"({len(rows) - max_rows} more rows not shown)\n"
    return render(rows, fmt)


def build_report(workdir: str | Path, *, run_id: str | None = None, fmt: str = "table") -> str:
    """Every non-empty paper table of a run (default: the latest), with metric models and unsupported systems."""
    path = _database(workdir)
    run_id = run_id or latest_run(workdir)
    if run_id is None:
        raise InputError(f"no benchmark results in {path}", [], hint="run `gill bench vist|visdial|cc3m-fid` first")
    results = query(path, "SELECT * FROM results WHERE run_id = ?", [run_id])
    if results.empty:
        known = ", ".join(query(path, "SELECT DISTINCT run_id FROM results").run_id) or "none"
        raise InputError(f"run {run_id!r} has no results in {path}", [f"runs with results: {known}"])
    run = query(path, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    out = [
        f"benchmark run {run_id}"
        + (
            f" (checkpoint {resolve_stored(run.checkpoint.iloc[0], workdir)}, preset {run.preset.iloc[0]})"
            if len(run)
            else ""
        ),
        f"database: {path}",
        "",
    ]
    sections = [(t.title, paper_table(results, t), t.benchmark) for t in PAPER_TABLES]
    scene = results[results.metric.str.startswith("scene_")]
    sections += [(t.title, paper_table(scene, t), None) for t in SCENE_TABLES]
    sections.append(
        (
            "Retrieval recall@k (the true image ranked among the evaluated samples' images)",
            retrieval_table(results),
            None,
        )
    )
    sections.append(("CC3M FID (clean-fid, mode clean)", fid_table(results), "cc3m-fid"))
    ablation = query(path, "SELECT * FROM table_mapper_ablation")
    if len(ablation) > 1:
        sections.append(("Mapper ablation (gill-gen; all runs)", frame_rows(ablation), None))
    claims = claims_rows(path, run_id)
    if claims:
        sections.append(("Claims of the paper on these results (claims view)", claims, None))
    for title, rows, benchmark in sections:
        if not rows:
            continue
        out += [title, render(rows, fmt)]
        if benchmark is not None:
            out += _footnotes(path, results, run_id, benchmark)
    out.append("[low, high]: 95% percentile-bootstrap intervals over samples; every number: SELECT * FROM results")
    return "\n".join(out) + "\n"


def claims_rows(path: Path, run_id: str) -> list[dict[str, str]]:
    """The ``claims`` view of one run, formatted: the paper's numbers, ours with intervals, and the verdicts."""
    frame = query(path, "SELECT * FROM claims WHERE run_id = ?", [run_id])
    rows = []
    for r in frame.itertuples():
        paper = "-" if _nan(r.paper_a) else f"{r.paper_a:.3f} vs {r.paper_b:.3f}"
        claim = r.claim + (" [fitted on SIMULATED panel votes]" if "SIMULATED" in str(r.arm_a) else "")
        rows.append(
            {
                "id": r.claim_id,
                "claim": claim,
                "where": r.source,
                "metric": r.metric,
                "paper (A vs B)": paper,
                "ours A": cell(r.ours_a, r.a_low, r.a_high),
                "ours B": cell(r.ours_b, r.b_low, r.b_high),
                "holds": r.holds,
                "paired A-B": cell(r.diff, r.diff_low, r.diff_high),
                "holds (paired)": "-" if _nan(r.holds_paired) else r.holds_paired,
            }
        )
    return rows


def build_claims(workdir: str | Path, *, run_id: str | None = None, fmt: str = "table") -> str:
    """The claims table of a run (default: the latest): which of the paper's claims hold on these results."""
    path = _database(workdir)
    run_id = run_id or latest_run(workdir)
    if run_id is None:
        raise InputError(f"no benchmark results in {path}", [], hint="run `gill bench vist|visdial|cc3m-fid` first")
    rows = claims_rows(path, run_id)
    legend = (
        "holds: the two 95% intervals do not overlap (true/false) or overlap (inconclusive); holds (paired): "
        "the 95% interval of the paired per-sample difference A - B; every column: SELECT * FROM claims"
    )
    return f"claims of the GILL paper, benchmark run {run_id} ({path})\n{render(rows, fmt)}{legend}\n"


def _footnotes(path: Path, results: Any, run_id: str, benchmark: str) -> list[str]:
    own = results[results.benchmark == benchmark]
    models = sorted({f"{m}: {model}" for m, model in zip(own.metric, own.metric_model, strict=True) if model})
    lines = [f"  metric models: {'; '.join(models)}"]
    n = own.n.max() if len(own) else 0
    lines.append(
        f"  samples per cell: up to {n}; skipped: {int(own.n_skipped.fillna(0).max()) if len(own) else 0}; "
        f"seeds: {int(own.n_seeds.max()) if len(own) else 0}"
    )
    unsupported = query(
        path, "SELECT system, reason FROM unsupported_systems WHERE run_id = ? AND benchmark = ?", [run_id, benchmark]
    )
    lines += [f"  not run: {r.system}: {r.reason}" for r in unsupported.itertuples()]
    return [*lines, ""]


def _database(workdir: str | Path) -> Path:
    path = db_path(workdir)
    if not path.is_file():
        raise InputError(f"no database at {path}", [], hint="run a stage first, or pass the --workdir it ran in")
    return ensure_database(path)  # adds the benchmark tables and views to a database of an older gill


def _get(row: Any, key: str) -> Any:
    return None if row is None else row[key]


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
