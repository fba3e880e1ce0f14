"""Stage ``report``: the paper tables, the claims table, the effect-of-context figure and the sample grids of a
benchmark run, from the project store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eval.grids import draw_run_grids
from flows.stages.bench_report import build_claims, build_report, plot_context_effect
from flows.stages.html_report import write_html_report
from flows.store import query
from flows.workdir import Workdir


@dataclass(frozen=True, kw_only=True)
class ReportOutcome:
    """What the report stage wrote."""

    run_id: str
    report: str
    """The paper tables as plain text."""
    markdown: str
    """The same tables in markdown."""
    claims: str
    """The claims table (markdown)."""
    plot: Path | None
    """The effect-of-context figure (None without VIST/VisDial results)."""
    grids: list[Path] = field(default_factory=list)
    """Sample grids per benchmark setting."""


def run(
    workdir: Workdir,
    run_id: str,
    *,
    fmt: str = "table",
    figures: bool = True,
    plot: Path | None = None,
    html: Path | None = None,
) -> ReportOutcome:
    """The tables of run ``run_id`` in ``fmt`` (table, markdown or csv) and, with ``figures``, the context figure
    (at ``plot``, default ``<workdir>/bench/reports/context_effect.png``) and the sample grids beside it; with
    ``html``, also the static web page of all of it and of every sample, in that folder
    (:func:`flows.stages.html_report.write_html_report`)."""
    plot = plot or workdir.bench_reports / "context_effect.png"
    report = build_report(workdir.root, run_id=run_id, fmt=fmt)
    outcome = ReportOutcome(
        run_id=run_id,
        report=report,
        markdown=report if fmt == "markdown" else build_report(workdir.root, run_id=run_id, fmt="markdown"),
        claims=build_claims(workdir.root, run_id=run_id, fmt="markdown"),
        plot=plot_context_effect(workdir.root, plot, run_id=run_id) if figures else None,
        grids=draw_grids(workdir, run_id, plot.parent) if figures else [],
    )
    if html is not None:
        write_html_report(workdir, outcome, html)
    return outcome


def draw_grids(workdir: Workdir, run_id: str, out_dir: Path, *, limit: int = 4) -> list[Path]:
    """The qualitative grids of run ``run_id`` (context, ground truth, SD, GILL per sample) under ``out_dir``."""
    samples = query(workdir.database, "SELECT * FROM samples WHERE run_id = ? AND status = 'ok'", [run_id])
    return draw_run_grids(samples, workdir.root, run_id, out_dir, limit=limit)
