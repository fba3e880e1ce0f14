"""The report's figures, drawn like the GILL paper's, with matplotlib's object API.

Every function here is pure: it takes rows (pandas DataFrames shaped like the store's tables and views) and returns
a :class:`matplotlib.figure.Figure` (None when there is nothing to draw); :func:`save_figure` writes it as a PNG and
a PDF, atomically. No pyplot and no ``matplotlib.use``: a figure gets its own Agg canvas, so importing or calling
this module changes nothing in the host process (no backend switch, no global ``rcParams`` change).

* :func:`context_effect_figure`: the effect of context (paper section 5, the contextual-generation figure): one
  panel per benchmark (VIST 1 caption / 5 captions / 5 captions + 4 images; VisDial 1 / 5 / 10 rounds), CLIP
  similarity per system with its 95% bootstrap interval, and a second row with the scene score where it exists.
* :func:`mapper_ablation_figure`: the mapper ablation (paper Table 3): CC3M FID and VIST CLIP similarity of
  ``gill-gen`` per mapper kind, with intervals.
* :func:`training_figure`: each training loss and every validation figure against optimizer steps.
* :func:`decision_figure`: the retrieve-or-generate classifier (paper section 3.3): macro-F1 beside the judges'
  leave-one-out baseline, and confusion matrices.

A system has one colour and marker in every figure (:data:`SYSTEM_COLOURS`, :data:`SYSTEM_MARKERS`). Intervals are
drawn as vertical segments from the stored low to the stored high end (``ax.vlines``), so a figure shows exactly
the stored numbers, even an interval that does not contain its mean.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from gill.utils.io import atomic_write_bytes

SYSTEM_COLOURS: dict[str, str] = {
    "sd": "#1f77b4",
    "clip-retrieval": "#17becf",
    "fromage-retrieval": "#9467bd",
    "gill": "#d62728",
    "gill-gen": "#ff7f0e",
    "gill-ret": "#8c564b",
    "gill-oracle": "#2ca02c",
    "glide": "#7f7f7f",
}
"""System -> colour, the same in every figure; the key order is the legend order (baselines, then GILL's variants).
Systems of ``eval.bench_systems`` (and the unsupported GLIDE); another name gets a stable colour from
:data:`SPARE_COLOURS` (:func:`system_colour`)."""
SYSTEM_MARKERS: dict[str, str] = {
    "sd": "s",
    "clip-retrieval": "v",
    "fromage-retrieval": "^",
    "gill": "o",
    "gill-gen": "D",
    "gill-ret": "P",
    "gill-oracle": "*",
    "glide": "x",
}
"""System -> marker, so lines stay apart in greyscale print too."""
SYSTEM_LABELS: dict[str, str] = {
    "sd": "Stable Diffusion",
    "clip-retrieval": "CLIP retrieval",
    "fromage-retrieval": "FROMAGe retrieval",
    "gill": "GILL",
    "gill-gen": "GILL, always generate",
    "gill-ret": "GILL, always retrieve",
    "gill-oracle": "GILL, oracle decision",
    "glide": "GLIDE",
}
"""System -> legend label."""
SPARE_COLOURS = ("#e377c2", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173")

CONTEXT_SETTINGS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "vist": ("VIST", (("1cap", "1 caption"), ("5cap", "5 captions"), ("5cap4img", "5 captions\n+ 4 images"))),
    "visdial": ("VisDial", (("1round", "1 round"), ("5rounds", "5 rounds"), ("10rounds", "10 rounds"))),
}
"""Benchmark -> (panel title, its settings in context order with their tick labels)."""
CONTEXT_METRICS = (
    ("clip_sim", "CLIP similarity to\nthe ground-truth image"),
    ("scene_score", "scene score\n(answer key, 0 to 1)"),
)
"""The rows of the context figure: (metric, y label); a row is drawn only where the metric has results."""

LOSSES: dict[str, str] = {
    "loss": "total loss (weighted sum)",
    "loss_cap": "captioning loss (cross-entropy)",
    "loss_lp": "[IMG] token loss l_p",
    "loss_ret": "retrieval loss (InfoNCE)",
    "loss_gen": "generation loss (to SD text space)",
}
"""Training losses (paper section 3.4) -> y label; a ``val_<loss>`` figure is drawn on its loss's panel."""
VALIDATION_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("retrieval recall (validation)", "recall (fraction)", ("val_t2i_r1", "val_i2t_r1", "val_t2i_r5", "val_i2t_r5")),
    ("caption token accuracy (validation)", "top-1 accuracy", ("val_acc1",)),
    ("caption BLEU (validation)", "BLEU", ("val_bleu1", "val_bleu2", "val_bleu3", "val_bleu4")),
)
"""Validation figures drawn together: (panel title, y label, names); any other ``val_`` name gets its own panel."""
NOT_A_CURVE = frozenset({"val_samples"})
"""Validation rows that are no curve (``val_samples``: the size of the retrieval pool, shown in the title)."""
SERIES_LABELS = {
    "val_t2i_r1": "text to image R@1",
    "val_i2t_r1": "image to text R@1",
    "val_t2i_r5": "text to image R@5",
    "val_i2t_r5": "image to text R@5",
    "val_acc1": "top-1",
}
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#d62728"
SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")

FONT = {"title": 11, "label": 10, "tick": 9, "legend": 9, "note": 8}
"""Font sizes in points, passed to each text (never through the process-wide ``rcParams``)."""


# -- colours, saving ------------------------------------------------------------------------------------------------


def system_colour(system: str) -> str:
    """The colour of ``system`` in every figure (a stable spare colour for a system :data:`SYSTEM_COLOURS` lacks)."""
    if system in SYSTEM_COLOURS:
        return SYSTEM_COLOURS[system]
    return SPARE_COLOURS[zlib.crc32(system.encode()) % len(SPARE_COLOURS)]


def system_label(system: str) -> str:
    """The legend label of ``system``."""
    return SYSTEM_LABELS.get(system, system)


def ordered_systems(systems: Iterable[str]) -> list[str]:
    """``systems`` in legend order: those of :data:`SYSTEM_COLOURS` in its order, then the others by name."""
    known = list(SYSTEM_COLOURS)
    return sorted(set(systems), key=lambda s: (known.index(s) if s in known else len(known), s))


def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas and constrained layout (legends placed outside the axes fit on the page)."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


@dataclass(frozen=True)
class SavedFigure:
    """Where :func:`save_figure` wrote a figure."""

    png: Path
    pdf: Path


def save_figure(figure: Figure, png: str | Path, *, dpi: int = 150) -> SavedFigure:
    """Write ``figure`` to ``png`` and to the same name with ``.pdf``, each atomically; the PDF carries no creation
    date, so drawing the same rows again writes the same bytes."""
    png = Path(png)
    if png.suffix.lower() != ".png":
        raise ValueError(f"a figure's file must end in .png (a PDF goes beside it), got {png}")
    out = {}
    for fmt, path, metadata in (
        ("png", png, {"Software": "gill (matplotlib)"}),
        ("pdf", png.with_suffix(".pdf"), {"Creator": "gill (matplotlib)", "CreationDate": None}),
    ):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
        out[fmt] = atomic_write_bytes(path, buffer.getvalue())
    return SavedFigure(png=out["png"], pdf=out["pdf"])


# -- the effect of context -------------------------------------------------------------------------------------------


def context_effect_figure(results: Any, *, title: str = "") -> Figure | None:
    """CLIP similarity (and the scene score, where it exists) against context, one panel per benchmark.

    ``results``: rows of the ``results`` table of one benchmark run (columns benchmark, setting, system, metric,
    mean, ci_low, ci_high). Each system is a line over its benchmark's settings with a marker at each mean and a
    vertical segment over its 95% interval; systems are offset a little along x so their intervals do not hide
    each other. None when no VIST or VisDial result of :data:`CONTEXT_METRICS` is there.
    """
    own = results[results.benchmark.isin(list(CONTEXT_SETTINGS)) & results.metric.isin([m for m, _ in CONTEXT_METRICS])]
    own = own[own["mean"].notna()]
    benchmarks = [b for b in CONTEXT_SETTINGS if (own.benchmark == b).any()]
    metrics = [(m, label) for m, label in CONTEXT_METRICS if (own.metric == m).any()]
    if not benchmarks or not metrics:
        return None
    systems = ordered_systems(own.system)
    figure = new_figure(4.2 * len(benchmarks) + 2.4, 3.3 * len(metrics) + 0.6)
    grid = figure.subplots(len(metrics), len(benchmarks), squeeze=False)
    spread = 0.5 / max(len(systems), 1)
    drawn: list[tuple[int, int]] = []
    for row, (metric, _) in enumerate(metrics):
        for col, benchmark in enumerate(benchmarks):
            ax = grid[row][col]
            name, settings = CONTEXT_SETTINGS[benchmark]
            cells = own[(own.benchmark == benchmark) & (own.metric == metric)]
            if cells.empty:  # e.g. no scene score on real data: say so instead of an empty frame
                ax.axis("off")
                ax.text(0.5, 0.5, f"{name}: no {metric.replace('_', ' ')}", ha="center", fontsize=FONT["note"])
                continue
            for i, system in enumerate(systems):
                offset = (i - (len(systems) - 1) / 2) * spread
                _context_line(ax, cells[cells.system == system], settings, system, offset)
            ax.set_xticks(range(len(settings)), [label for _, label in settings], fontsize=FONT["tick"])
            ax.set_xlim(-0.5, len(settings) - 0.5)
            ax.set_title(f"{name}: {metric.replace('_', ' ')}" if row else name, fontsize=FONT["title"])
            _tidy(ax, decimals=2)
            if metric == "scene_score":
                ax.set_ylim(-0.02, 1.02)
            drawn.append((row, col))
    for row, (_, ylabel) in enumerate(metrics):  # y label on each row's first drawn panel
        first = min(c for r, c in drawn if r == row)
        grid[row][first].set_ylabel(ylabel, fontsize=FONT["label"])
    for col in range(len(benchmarks)):  # x label under each column's lowest drawn panel
        last = max(r for r, c in drawn if c == col)
        grid[last][col].set_xlabel("context in the prompt", fontsize=FONT["label"])
    _system_legend(figure, systems)
    if title:
        figure.suptitle(title, fontsize=FONT["title"])
    return figure


def _context_line(ax: Axes, cells: Any, settings: Sequence[tuple[str, str]], system: str, offset: float) -> None:
    """One system's means over the settings (a line with markers) and its intervals (vertical segments)."""
    by_setting = {r.setting: r for r in cells.itertuples()}
    xs, means, lows, highs = [], [], [], []
    for x, (setting, _) in enumerate(settings):
        r = by_setting.get(setting)
        if r is None:
            continue
        xs.append(x + offset)
        means.append(float(r.mean))
        lows.append(_float(r.ci_low))
        highs.append(_float(r.ci_high))
    if not xs:
        return
    colour = system_colour(system)
    ax.plot(
        xs,
        means,
        color=colour,
        marker=SYSTEM_MARKERS.get(system, "o"),
        markersize=5,
        linewidth=1.4,
        label=system_label(system),
        gid=system,
    )
    _intervals(ax, xs, lows, highs, colour, gid=f"{system}:interval")


def _intervals(ax: Axes, xs: Sequence[float], lows: Sequence[float], highs: Sequence[float], colour: str, gid: str):
    """Vertical segments from each low to each high end (skipping a missing interval), with short caps."""
    keep = [(x, lo, hi) for x, lo, hi in zip(xs, lows, highs, strict=True) if math.isfinite(lo) and math.isfinite(hi)]
    if not keep:
        return None
    x, lo, hi = (list(v) for v in zip(*keep, strict=True))
    segments = ax.vlines(x, lo, hi, colors=colour, linewidth=1.1, alpha=0.85)
    segments.set_gid(gid)
    for ends in (lo, hi):
        ax.plot(x, ends, linestyle="none", marker="_", markersize=6, color=colour, alpha=0.85)
    return segments


def _system_legend(figure: Figure, systems: Sequence[str]) -> None:
    handles = [
        Line2D([], [], color=system_colour(s), marker=SYSTEM_MARKERS.get(s, "o"), markersize=5, label=system_label(s))
        for s in systems
    ]
    figure.legend(
        handles=handles, loc="outside right upper", fontsize=FONT["legend"], title="system", frameon=False
    ).get_title().set_fontsize(FONT["legend"])


# -- mapper ablation -------------------------------------------------------------------------------------------------

ABLATION_PANELS = (
    ("cc3m_fid", "CC3M FID (lower is better)", "FID", 1),
    ("vist_clip_sim", "VIST, 5 captions + 4 images", "CLIP similarity to\nthe ground-truth image", 3),
)
"""(column of ``table_mapper_ablation``, panel title, y label, decimals); ``<column>_low``/``_high`` are its
interval (the ``ci_low``/``ci_high`` of the ``results`` row the view takes the figure from)."""


def mapper_ablation_figure(rows: Any, *, title: str = "") -> Figure | None:
    """Paper Table 3 as bars: ``gill-gen``'s CC3M FID and VIST CLIP similarity per mapper kind, with intervals.

    ``rows``: rows of the ``table_mapper_ablation`` view with the intervals beside them (run_id, mapper,
    cc3m_fid, cc3m_fid_low, cc3m_fid_high, vist_clip_sim, vist_clip_sim_low, vist_clip_sim_high); one bar per row,
    labelled by its mapper (and its run when a mapper kind appears twice). A missing figure is written ``n/a`` in
    place of its bar. None without rows.
    """
    if rows is None or len(rows) == 0:
        return None
    panels = [p for p in ABLATION_PANELS if p[0] in rows and rows[p[0]].notna().any()]
    if not panels:
        return None
    mappers = [str(m) for m in rows.mapper]
    repeated = {m for m in mappers if mappers.count(m) > 1}
    labels = [f"{m}\n({r})" if m in repeated else m for m, r in zip(mappers, rows.run_id, strict=True)]
    figure = new_figure(3.2 * len(panels) + 0.8 * len(rows), 3.6)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colour = system_colour("gill-gen")
    for ax, (column, panel_title, ylabel, decimals) in zip(axes, panels, strict=True):
        xs = list(range(len(rows)))
        means = [_float(v) for v in rows[column]]
        bars = ax.bar(xs, [0.0 if math.isnan(m) else m for m in means], width=0.6, color=colour, alpha=0.8)
        for bar in bars:
            bar.set_gid(column)
        for bar, mean in zip(bars, means, strict=True):
            if math.isnan(mean):
                bar.set_visible(False)
                ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom", fontsize=8)
            else:
                ax.annotate(
                    f"{mean:.{decimals}f}",
                    (bar.get_x() + bar.get_width() / 2, mean),
                    xytext=(4, 2),
                    textcoords="offset points",
                    ha="left",
                    fontsize=FONT["note"],
                )
        lows = [_float(v) for v in rows.get(f"{column}_low", [math.nan] * len(rows))]
        highs = [_float(v) for v in rows.get(f"{column}_high", [math.nan] * len(rows))]
        _intervals(ax, xs, lows, highs, "black", gid=f"{column}:interval")
        ax.set_xticks(xs, labels, fontsize=FONT["tick"])
        ax.set_xlabel("mapper (gill-gen)", fontsize=FONT["label"])
        ax.set_ylabel(ylabel, fontsize=FONT["label"])
        ax.set_title(panel_title, fontsize=FONT["title"])
        _tidy(ax, decimals=0 if column == "cc3m_fid" else 2)
    figure.suptitle(title or "Mapper ablation (bars: mean; segments: 95% interval)", fontsize=FONT["title"])
    return figure


# -- training curves --------------------------------------------------------------------------------------------------


def training_figure(metrics: Any, *, title: str = "") -> Figure | None:
    """Each loss of :data:`LOSSES` and every validation figure against optimizer steps, one panel each.

    ``metrics``: ``train_metrics`` rows of one run (step, name, value). A loss panel draws the training value
    (solid) and, where validation computed it too (``val_loss_cap``, ``val_loss_gen``), the validation value
    (dashed, with markers). Validation figures are grouped as :data:`VALIDATION_GROUPS`; any other ``val_`` name
    gets its own panel. Non-finite values are left out. None when no loss or validation value is there.
    """
    frame = metrics[np.isfinite(metrics.value.astype(float))]
    series = {str(name): group.sort_values("step") for name, group in frame.groupby("name")}
    panels: list[tuple[str, str, list[tuple[str, str, str, bool]]]] = []
    for loss, ylabel in LOSSES.items():
        lines = [(name, label, colour, val) for name, label, colour, val in _loss_lines(loss) if name in series]
        if lines:
            panels.append((loss, ylabel, lines))
    drawn = {name for _, _, lines in panels for name, *_ in lines}
    for group_title, ylabel, names in VALIDATION_GROUPS:
        lines = [
            (n, SERIES_LABELS.get(n, n.removeprefix("val_")), SERIES_COLOURS[i % len(SERIES_COLOURS)], True)
            for i, n in enumerate(names)
            if n in series
        ]
        if lines:
            panels.append((group_title, ylabel, lines))
            drawn |= {n for n, *_ in lines}
    for name in sorted(series):
        if name.startswith("val_") and name not in drawn and name not in NOT_A_CURVE:
            short = name.removeprefix("val_")
            panels.append((f"{short} (validation)", short, [(name, "", VAL_COLOUR, True)]))
    if not panels:
        return None
    columns = min(3, len(panels))
    n_rows = math.ceil(len(panels) / columns)
    figure = new_figure(4.0 * columns + 1.6, 2.9 * n_rows + 0.7)
    axes = figure.subplots(n_rows, columns, squeeze=False)
    for ax, (panel_title, ylabel, lines) in zip(axes.flat, panels, strict=False):
        for name, label, colour, val in lines:
            points = series[name]
            ax.plot(
                points.step.astype(float),
                points.value.astype(float),
                color=colour,
                linestyle="--" if val and name.removeprefix("val_") in LOSSES else "-",
                marker="o" if val else None,
                markersize=4,
                linewidth=1.3,
                label=label,
                gid=name,
            )
        ax.set_title(panel_title, fontsize=FONT["title"])
        ax.set_xlabel("optimizer step", fontsize=FONT["label"])
        ax.set_ylabel(ylabel, fontsize=FONT["label"])
        _tidy(ax, decimals=None)
        if any(label for _, label, *_ in lines) and len(lines) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=FONT["legend"], frameon=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    pool = series.get("val_samples")
    note = f"; validation pool {int(pool.value.iloc[-1])} pairs" if pool is not None and len(pool) else ""
    figure.suptitle((title or "Training") + note, fontsize=FONT["title"])
    return figure


def _loss_lines(loss: str) -> list[tuple[str, str, str, bool]]:
    """(series name, legend label, colour, is validation) of one loss panel: the training loss and its val_ twin."""
    return [(loss, "training", TRAIN_COLOUR, False), (f"val_{loss}", "validation", VAL_COLOUR, True)]


# -- decision classifier --------------------------------------------------------------------------------------------

CONFUSION_COLUMNS = ("true_gen_pred_gen", "true_gen_pred_ret", "true_ret_pred_gen", "true_ret_pred_ret")
"""Columns of ``decision_eval`` holding a confusion matrix (rows: true gen, ret; columns: predicted gen, ret), as the
store declares them."""
DECISION_BARS = (
    ("official", "held-out split, final model", "#08519c"),
    ("cv", "k-fold CV (mean, ± 1 s.d.; dots: folds)", "#6baed6"),
)
"""The classifier's bars: (key, legend label, colour); blues, no system's colour (these are not systems)."""
JUDGE_BARS = (
    ("macro_f1_leave_one_out", "judges, leave-one-out", "#555555"),
    ("macro_f1_official", "judges, official (leaky)", "#bbbbbb"),
)


@dataclass(frozen=True, kw_only=True)
class DecisionFit:
    """The figures of one decision-classifier fit, read from its ``decision_eval`` rows."""

    run_id: str
    label: str
    official: tuple[float, float, float] | None
    """(macro-F1, interval low, interval high) on the held-out part of the official split (NaN ends: not stored)."""
    official_n: int | None
    cv: tuple[float, float] | None
    """(mean, standard deviation) over the folds."""
    folds: tuple[float, ...]
    judges: dict[str, float]
    """Judges' baseline metric -> macro-F1."""
    panel: str
    """Whose votes: the judges' protocol (``human``, or ``<panel>-panel`` such as ``simulated-panel``)."""
    confusion: dict[str, np.ndarray]
    """Protocol (``official``, ``cv``) -> 2x2 counts, rows true gen/ret, columns predicted gen/ret."""


def decision_fits(rows: Any) -> list[DecisionFit]:
    """The fits in ``decision_eval`` rows (one per run_id, in row order of first appearance)."""
    fits = []
    for run_id in dict.fromkeys(rows.run_id):
        own = rows[rows.run_id == run_id]
        official = own[own.protocol.str.startswith("official") & (own.metric == "macro_f1")]
        cv = own[own.protocol.str.match(r"^cv\d+$")]
        cv_mean = cv[cv.metric == "macro_f1"]
        cv_std = cv[cv.metric == "macro_f1_std"]
        judges = own[own.protocol.str.endswith("panel") | (own.protocol == "human")]
        first = own.iloc[0]
        confusion = {}
        for key, part in (("official", official), ("cv", cv_mean)):
            if len(part) and all(c in part for c in CONFUSION_COLUMNS):
                counts = [_float(part.iloc[0][c]) for c in CONFUSION_COLUMNS]
                if all(math.isfinite(c) for c in counts):
                    confusion[key] = np.array(counts, dtype=int).reshape(2, 2)
        fits.append(
            DecisionFit(
                run_id=str(run_id),
                label=_fit_label(first),
                official=(
                    tuple(_float(official.iloc[0].get(c)) for c in ("value", "ci_low", "ci_high"))  # type: ignore[arg-type]
                    if len(official)
                    else None
                ),
                official_n=int(official.iloc[0].n) if len(official) and _finite(official.iloc[0].n) else None,
                cv=(float(cv_mean.value.iloc[0]), _float(cv_std.value.iloc[0]) if len(cv_std) else math.nan)
                if len(cv_mean)
                else None,
                folds=tuple(float(v) for v in cv[cv.metric.str.match(r"^macro_f1_fold\d+$")].value),
                judges={m: float(v) for m, v in zip(judges.metric, judges.value, strict=True)},
                panel=str(judges.protocol.iloc[0]) if len(judges) else "human",
                confusion=confusion,
            )
        )
    return fits


def _fit_label(row: Any) -> str:
    recipe = row.get("recipe") if hasattr(row, "get") else None
    recipe = recipe if isinstance(recipe, str) and recipe else "official"
    head = "h[IMG0] + retrieval score" if bool(row.get("with_retrieval_score")) else "h[IMG0]"
    return f"{head}, {recipe} recipe"


def decision_figure(rows: Any, *, title: str = "") -> Figure | None:
    """Macro-F1 of the classifier beside the judges' baseline, and its confusion matrices (paper section 3.3).

    ``rows``: ``decision_eval`` rows of one or more fits. Left: per fit, the held-out macro-F1 of the official
    split (with its 95% interval where stored) and the k-fold mean (± 1 s.d., with each fold as a dot); then the
    judges' leave-one-out and official macro-F1. Right, one row per fit: the confusion matrix of the held-out part
    and of the pooled cross-validation folds, where the counts are stored. None without a classifier figure.
    """
    if rows is None or len(rows) == 0:
        return None
    fits = [f for f in decision_fits(rows) if f.official is not None or f.cv is not None]
    if not fits:
        return None
    keys = [k for k in ("official", "cv") if any(k in f.confusion for f in fits)]
    with_counts = [f for f in fits if f.confusion]
    bars_width = 2.2 + 1.5 * (len(fits) + 1)
    figure = new_figure(bars_width + 2.6 + 2.4 * len(keys), max(4.2, 2.4 * len(with_counts) + 0.8))
    grid = figure.add_gridspec(max(len(with_counts), 1), 1 + len(keys), width_ratios=[bars_width] + [2.2] * len(keys))
    _decision_bars(figure.add_subplot(grid[:, 0]), fits)
    for r, fit in enumerate(with_counts):
        for c, key in enumerate(keys):
            ax = figure.add_subplot(grid[r, 1 + c])
            if key not in fit.confusion:
                ax.set_visible(False)
                continue
            part = "held-out split" if key == "official" else "CV, folds pooled"
            _confusion(ax, fit.confusion[key], f"{fit.label.replace(', ', ',' + chr(10))}\n{part}")
    note = "" if keys else "\n(no confusion counts stored: fits of an older gill)"
    figure.suptitle((title or "Retrieve-or-generate decision classifier") + note, fontsize=FONT["title"])
    return figure


def _decision_bars(ax: Axes, fits: Sequence[DecisionFit]) -> None:
    width = 0.38
    for i, fit in enumerate(fits):
        for j, (key, label, colour) in enumerate(DECISION_BARS):
            x = i + (j - 0.5) * width
            value = fit.official if key == "official" else fit.cv
            if value is None:
                continue
            bar = ax.bar([x], [value[0]], width=width * 0.92, color=colour, label=label if i == 0 else None)
            bar.patches[0].set_gid(f"{fit.run_id}:{key}")
            _value_label(ax, x, value[0])
            if key == "official":
                _intervals(ax, [x], [value[1]], [value[2]], "black", gid=f"{fit.run_id}:official:interval")
            else:
                std = value[1]
                if math.isfinite(std):
                    _intervals(ax, [x], [value[0] - std], [value[0] + std], "black", gid=f"{fit.run_id}:cv:interval")
                if fit.folds:
                    ax.plot(
                        [x] * len(fit.folds),
                        fit.folds,
                        linestyle="none",
                        marker="o",
                        markersize=3,
                        color="black",
                        alpha=0.6,
                        gid=f"{fit.run_id}:folds",
                    )
    judges = fits[-1].judges
    x0 = len(fits)
    for j, (metric, label, colour) in enumerate(JUDGE_BARS):
        if metric in judges:
            x = x0 + (j - 0.5) * width
            bar = ax.bar([x], [judges[metric]], width=width * 0.92, color=colour, label=label)
            bar.patches[0].set_gid(f"judges:{metric}")
            _value_label(ax, x, judges[metric])
    panel = fits[-1].panel
    who = "judges (people)" if panel == "human" else f"judges ({panel.replace('-', ' ')})"
    labels = [f.label.replace(", ", ",\n").replace(" + ", "\n+ ") for f in fits]
    labels += [f"{who}\nbaseline"] if judges else []
    ax.set_xticks(range(len(labels)), labels, fontsize=FONT["tick"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("macro-F1", fontsize=FONT["label"])
    ax.set_title("macro-F1 (segments: 95% interval / ± 1 s.d.)", fontsize=FONT["title"])
    _tidy(ax, decimals=1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=FONT["legend"], frameon=False)


def _value_label(ax: Axes, x: float, value: float) -> None:
    """The bar's value, small, inside the bar at its foot (clear of the interval segment at its top)."""
    ax.annotate(
        f"{value:.2f}",
        (x, 0),
        xytext=(0, 4),
        textcoords="offset points",
        ha="center",
        fontsize=FONT["note"],
        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
    )


def _confusion(ax: Axes, counts: np.ndarray, title: str) -> None:
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    image.set_gid("confusion")
    for (r, c), value in np.ndenumerate(counts):
        colour = "white" if value > 0.6 * counts.max() else "black"  # readable on the dark cells too
        ax.text(c, r, str(int(value)), ha="center", va="center", fontsize=FONT["label"], color=colour)
    ax.set_xticks([0, 1], ["gen", "ret"], fontsize=FONT["tick"])
    ax.set_yticks([0, 1], ["gen", "ret"], fontsize=FONT["tick"])
    ax.set_xlabel("predicted", fontsize=FONT["label"])
    ax.set_ylabel("judges' label", fontsize=FONT["label"])
    ax.set_title(title, fontsize=FONT["note"] + 1)


# -- shared ------------------------------------------------------------------------------------------------------------


def _tidy(ax: Axes, *, decimals: int | None) -> None:
    """Light grid, a few round ticks, no offset or scientific notation on the y axis."""
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=FONT["tick"])
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    if decimals is not None:
        ax.yaxis.set_major_formatter(FormatStrFormatter(f"%.{decimals}f"))
    else:
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _float(value: Any) -> float:
    """A stored number as a float (NaN for NULL / NA)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _finite(value: Any) -> bool:
    return math.isfinite(_float(value))
