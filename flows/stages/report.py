"""Stage ``report``: the paper tables, the claims table, the figures and the sample grids of a benchmark run, from
the project store.

The figures (:mod:`eval.plots`, each a PNG with a PDF beside it, under ``<workdir>/bench/reports/``) are drawn for
whatever the store holds: the effect of context (the run's VIST/VisDial ``results``), the training curves of the
main run (``train_metrics``), the mapper ablation (``table_mapper_ablation``, when the ablation ran) and the
decision classifier (the latest fits in ``decision_eval``). A figure without data is left out, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.grids import draw_run_grids
from eval.plots import (
    context_effect_figure,
    decision_figure,
    mapper_ablation_figure,
    save_figure,
    training_figure,
)
from flows.stages.bench_report import build_claims, build_report
from flows.stages.html_report import write_html_report
from flows.store import query
from flows.workdir import Workdir
from gill.errors import InputError
from gill.utils.paths import resolve_stored

FIGURES = ("context_effect", "training", "mapper_ablation", "decision")
"""The figures the report draws, by name (the keys of :attr:`ReportOutcome.figures`)."""


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
    """The effect-of-context figure (None without VIST/VisDial results); also ``figures["context_effect"]``."""
    grids: list[Path] = field(default_factory=list)
    """Sample grids per benchmark setting."""
    figures: dict[str, Path] = field(default_factory=dict)
    """Figure name (:data:`FIGURES`) -> its PNG; the PDF is beside it (same name, ``.pdf``). Only drawn figures."""


def run(
    workdir: Workdir,
    run_id: str,
    *,
    fmt: str = "table",
    figures: bool = True,
    plot: Path | None = None,
    training_run: str | None = None,
    html: Path | None = None,
) -> ReportOutcome:
    """The tables of run ``run_id`` in ``fmt`` (table, markdown or csv) and, with ``figures``, every figure the store
    has data for and the sample grids, under ``<workdir>/bench/reports/`` (the context figure at ``plot`` when
    given; it must end in ``.png``). ``training_run``: whose training curves to draw (default: the run of the
    benchmarked checkpoint, else the work folder's default run). With ``html``, also the static web page of all of
    it and of every sample, in that folder (:func:`flows.stages.html_report.write_html_report`).

    Raises:
        InputError: ``plot`` does not end in ``.png``, or ``training_run`` names a run without training metrics.
    """
    problems = []
    if plot is not None and Path(plot).suffix.lower() != ".png":
        problems.append(f"--plot {plot}: the context figure is a PNG (its PDF goes beside it); end the name in .png")
    if figures and training_run is not None and not _has_metrics(workdir, training_run):
        problems.append(
            f"training run {training_run!r} has no rows in train_metrics; runs with metrics: {_runs(workdir)}"
        )
    if problems:
        raise InputError("cannot draw the requested figures", problems, hint="gill report --help")
    report = build_report(workdir.root, run_id=run_id, fmt=fmt)
    drawn: dict[str, Path] = {}
    grids: list[Path] = []
    if figures:
        out_dir = workdir.bench_reports
        drawn = draw_figures(workdir, run_id, out_dir, plot=plot, training_run=training_run)
        grids = draw_grids(workdir, run_id, (plot or out_dir / "context_effect.png").parent)
    outcome = ReportOutcome(
        run_id=run_id,
        report=report,
        markdown=report if fmt == "markdown" else build_report(workdir.root, run_id=run_id, fmt="markdown"),
        claims=build_claims(workdir.root, run_id=run_id, fmt="markdown"),
        plot=drawn.get("context_effect"),
        grids=grids,
        figures=drawn,
    )
    if html is not None:
        write_html_report(workdir, run_id, report_figures(outcome), html)
    return outcome


FIGURE_CAPTIONS = {
    "context_effect": "Effect of context: CLIP similarity and scene score against the context in the prompt, per "
    "system, with 95% intervals (paper section 5, Tables 1 and 2)",
    "mapper_ablation": "Mapper ablation: CC3M FID and VIST CLIP similarity per mapper kind, with 95% intervals "
    "(paper Table 3)",
    "decision": "Retrieve-or-generate decision classifier: macro-F1 beside the judges' leave-one-out baseline, and "
    "confusion matrices (paper section 3.3)",
    "training": "Training curves: each loss with its validation value, and the validation metrics, against steps",
}
"""The caption of each figure of :func:`draw_figures` in the report's web page."""


def report_figures(outcome: ReportOutcome) -> list[tuple[str, Path]]:
    """(caption, PNG) of every figure of ``outcome``, in reading order: the named figures, then the sample grids."""
    shown = [(FIGURE_CAPTIONS.get(name, name.replace("_", " ")), Path(png)) for name, png in outcome.figures.items()]
    if outcome.plot is not None and "context_effect" not in outcome.figures:
        shown.insert(0, (FIGURE_CAPTIONS["context_effect"], outcome.plot))
    for grid in outcome.grids:
        setting = grid.stem.removeprefix("grid_").replace("_", ", ")
        shown.append((f"Qualitative grid ({setting}): context, ground truth, SD, GILL forced to generate, GILL", grid))
    return shown


def draw_figures(
    workdir: Workdir, run_id: str, out_dir: Path, *, plot: Path | None = None, training_run: str | None = None
) -> dict[str, Path]:
    """Every figure of :data:`FIGURES` the store has data for, as ``<out_dir>/<name>.png`` (+ ``.pdf``); name -> PNG.

    The context figure goes to ``plot`` when given; the training figure is ``training_<run>.png``.
    """
    database = workdir.database
    results = query(database, "SELECT * FROM results WHERE run_id = ?", [run_id])
    training = training_run or main_training_run(workdir, run_id)
    metrics = (
        query(database, "SELECT step, name, value FROM train_metrics WHERE run_id = ? ORDER BY step", [training])
        if training is not None
        else None
    )
    ablation = mapper_ablation_rows(database)
    fits = latest_decision_fits(database)
    candidates = {
        "context_effect": (
            context_effect_figure(results, title=f"Effect of context, benchmark run {run_id}"),
            plot or out_dir / "context_effect.png",
        ),
        "training": (
            training_figure(metrics, title=f"Training run {training}") if metrics is not None else None,
            out_dir / f"training_{training}.png",
        ),
        "mapper_ablation": (
            mapper_ablation_figure(ablation) if len(ablation) > 1 else None,  # one row: the main run, no ablation
            out_dir / "mapper_ablation.png",
        ),
        "decision": (decision_figure(fits), out_dir / "decision.png"),
    }
    return {name: save_figure(figure, path).png for name, (figure, path) in candidates.items() if figure is not None}


ABLATION_INTERVALS = (
    ("cc3m_fid", {"benchmark": "cc3m-fid", "metric": "fid"}),
    ("vist_clip_sim", {"benchmark": "vist", "setting": "5cap4img", "metric": "clip_sim"}),
)
"""The figures of ``table_mapper_ablation`` (gill-gen's) and where their intervals are in ``results``."""


def mapper_ablation_rows(database: Path) -> Any:
    """``table_mapper_ablation`` with each figure's 95% interval beside it (``<figure>_low``, ``<figure>_high``)."""
    columns, joins, params = [], [], []
    for i, (name, cell) in enumerate(ABLATION_INTERVALS):
        columns.append(f"x{i}.ci_low AS {name}_low, x{i}.ci_high AS {name}_high")
        match = " AND ".join(f"x{i}.{column} = ?" for column in cell)
        joins.append(f"LEFT JOIN results x{i} ON x{i}.run_id = a.run_id AND x{i}.system = 'gill-gen' AND {match}")
        params += list(cell.values())
    return query(
        database,
        f"SELECT a.*, {', '.join(columns)} FROM table_mapper_ablation a {' '.join(joins)} ORDER BY a.mapper, a.run_id",
        params,
    )


def main_training_run(workdir: Workdir, run_id: str) -> str | None:
    """The training run behind benchmark run ``run_id``: the run folder its checkpoint is in, when that run has
    ``train_metrics``; else the work folder's default run (None when neither has metrics)."""
    runs = query(workdir.database, "SELECT checkpoint FROM runs WHERE run_id = ?", [run_id])
    candidates = []
    if len(runs) and isinstance(runs.checkpoint.iloc[0], str):
        checkpoint = resolve_stored(runs.checkpoint.iloc[0], workdir.root)
        if checkpoint.is_relative_to(workdir.runs) and checkpoint != workdir.runs:
            candidates.append(checkpoint.relative_to(workdir.runs).parts[0])
    candidates.append(workdir.default_run())
    return next((c for c in candidates if c is not None and _has_metrics(workdir, c)), None)


def latest_decision_fits(database: Path) -> Any:
    """The ``decision_eval`` rows of the newest fit of each head (recipe and features) on the newest fit's checkpoint
    and votes: what the decision stage fitted last (the official head, and the bank-aware one when it was asked)."""
    return query(
        database,
        "WITH newest AS (SELECT checkpoint_id, votes FROM decision_eval ORDER BY created DESC, run_id DESC LIMIT 1), "
        "fits AS (SELECT DISTINCT d.run_id, d.created, d.recipe, d.with_retrieval_score FROM decision_eval d "
        "JOIN newest n ON d.checkpoint_id IS NOT DISTINCT FROM n.checkpoint_id "
        "AND d.votes IS NOT DISTINCT FROM n.votes), "
        "chosen AS (SELECT run_id FROM fits QUALIFY row_number() OVER (PARTITION BY coalesce(recipe, 'official'), "
        "with_retrieval_score ORDER BY created DESC, run_id DESC) = 1) "
        "SELECT e.* FROM decision_eval e JOIN chosen USING (run_id) "
        "ORDER BY e.with_retrieval_score, e.run_id, e.protocol, e.metric",
    )


def draw_grids(workdir: Workdir, run_id: str, out_dir: Path, *, limit: int = 4) -> list[Path]:
    """The qualitative grids of run ``run_id`` (context, ground truth, SD, GILL per sample) under ``out_dir``."""
    samples = query(workdir.database, "SELECT * FROM samples WHERE run_id = ? AND status = 'ok'", [run_id])
    return draw_run_grids(samples, workdir.root, run_id, out_dir, limit=limit)


def _has_metrics(workdir: Workdir, run: str) -> bool:
    found = query(workdir.database, "SELECT count(*) AS n FROM train_metrics WHERE run_id = ?", [run])
    return bool(found.n.iloc[0])


def _runs(workdir: Workdir) -> str:
    runs = query(workdir.database, "SELECT DISTINCT run_id FROM train_metrics ORDER BY run_id").run_id
    return ", ".join(runs) or "none"
