"""Stage ``train``: train the adapters (paper section 3.4) on precomputed targets, with every logged metric in the
project store (``train_metrics``) and the training curves per run (``<run>/loss_curve.png`` and ``.pdf``: each loss
and every validation figure against steps, :func:`eval.plots.training_figure`); resumes a crashed run from its
newest checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch.distributed as dist

from eval.plots import save_figure, training_figure
from flows.store import db_path, query, record_metrics
from flows.workdir import Workdir
from gill.config import GILLConfig
from gill.errors import ConfigError, InputError
from gill.resume import CheckpointManager
from gill.train import TrainResult, setup_training
from gill.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

CURVES = ("loss", "loss_cap", "loss_lp", "loss_ret", "loss_gen")
LOSS_CURVE = "loss_curve.png"
"""A run's training curves (a PDF beside it): the name it always had, so references to it keep working."""


class TrainingReporter:
    """Receives a trainer's ``(step, metrics)`` and writes ``train_metrics``; draws the curves at the end."""

    def __init__(self, workdir: str | Path, run_id: str) -> None:
        self.database = db_path(workdir)
        self.run_id = run_id
        self.run_dir = Path(workdir) / "runs" / run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        """One step's metrics (training or validation names) into the database."""
        record_metrics(self.database, self.run_id, step, values)

    def finish(
        self, history: Sequence[dict[str, float]] = (), validations: Sequence[dict[str, float]] = ()
    ) -> Path | None:
        """Write the training curves to ``<run>/loss_curve.png`` (and ``.pdf``) from every step the database holds
        for the run (so a resumed run's curves cover its earlier part too), falling back to ``history`` and
        ``validations`` (the trainer's records); None when there is nothing to draw."""
        metrics = query(
            self.database, "SELECT step, name, value FROM train_metrics WHERE run_id = ? ORDER BY step", [self.run_id]
        )
        if metrics.empty:
            metrics = pd.DataFrame(
                [
                    {"step": h["step"], "name": name, "value": value}
                    for h in (*history, *validations)
                    for name, value in h.items()
                    if name != "step"
                ],
                columns=["step", "name", "value"],
            )
        figure = training_figure(metrics, title=f"GILL adapters, run {self.run_id}")
        return None if figure is None else save_figure(figure, self.run_dir / LOSS_CURVE).png


def curve_series(database: Path, run_id: str) -> dict[str, list[tuple[float, float]]]:
    """``{loss name: [(step, value), ...]}`` of a run from ``train_metrics`` (empty when nothing is logged)."""

    names = ", ".join(f"'{n}'" for n in CURVES)
    frame = query(
        database,
        f"SELECT step, name, value FROM train_metrics WHERE run_id = ? AND name IN ({names}) ORDER BY step",
        [run_id],
    )
    return {str(n): list(zip(g.step.astype(float), g.value, strict=True)) for n, g in frame.groupby("name")}


def curve_summary(database: Path, run_id: str) -> list[dict[str, float | str]]:
    """First and last logged value of each loss, and the last validation figures, of a run."""

    rows: list[dict[str, float | str]] = []
    for name, points in sorted(curve_series(database, run_id).items()):
        (s0, v0), (s1, v1) = points[0], points[-1]
        rows.append({"metric": name, "first_step": s0, "first": round(v0, 4), "last_step": s1, "last": round(v1, 4)})
    val = query(
        database,
        "SELECT step, name, value FROM train_metrics WHERE run_id = ? AND name LIKE 'val_%' "
        "AND step = (SELECT max(step) FROM train_metrics WHERE run_id = ? AND name LIKE 'val_%')",
        [run_id, run_id],
    )
    rows += [
        {"metric": r.name, "first_step": "", "first": "", "last_step": float(r.step), "last": round(r.value, 4)}
        for r in val.itertuples()
    ]
    return rows


DATA_STAMP = "data_fingerprint.txt"
"""A run's record of the training data it was started on (see :func:`train_or_resume`)."""


def _set_aside_stale_run(run_dir: Path, data_fingerprint: str | None) -> None:
    """Move ``run_dir`` aside (``<run>.stale-<n>``, nothing is deleted) when it was trained on other data."""
    if data_fingerprint is None or not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    stamp = run_dir / DATA_STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == data_fingerprint:
        return
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.stale-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    logger.warning(
        "run %s was trained on other data (or before data fingerprints were recorded): moved to %s; training afresh",
        run_dir.name,
        aside,
    )


def train_or_resume(
    config,
    workdir: str | Path,
    *,
    overrides: dict,
    run_id: str,
    device: str = "cpu",
    mark_default: bool = True,
    data_fingerprint: str | None = None,
) -> dict:
    """Bring run ``run_id`` to its step count: train it, resume it from its newest checkpoint after a crash, or
    recognise it as finished (its ``final/`` holds the target step). Returns the run's curve summary.
    With ``mark_default`` the run becomes the workdir's default checkpoint (not for ablation variants).

    With ``data_fingerprint`` (a digest of the training features) a run started on other data is neither resumed
    nor taken as finished: it is moved aside to ``<run>.stale-<n>`` and the run starts afresh.
    """

    work = Workdir.at(workdir)
    run_dir = work.run(run_id)
    _set_aside_stale_run(run_dir, data_fingerprint)
    if data_fingerprint is not None:
        atomic_write_text(run_dir / DATA_STAMP, data_fingerprint + "\n")
    target = int(overrides.get("steps") or config.train.steps)
    final = run_dir / "final" / "config.json"
    finished = final.is_file() and json.loads(final.read_text(encoding="utf-8")).get("extra", {}).get("step") == target
    status = "already trained"
    if not finished:
        resume = has_resumable_checkpoint(work, run_id)
        status = "resumed" if resume else "trained"
        run_training(
            config, workdir, overrides=overrides, run_id=run_id, resume=resume, device=device, mark_default=mark_default
        )
    elif mark_default:
        work.mark_default_run(run_id)
    database = work.database
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "status": status,
        "steps": target,
        "curve": curve_summary(database, run_id),
        "loss_curve": str(run_dir / LOSS_CURVE),
    }


def has_resumable_checkpoint(workdir: Workdir, run_id: str) -> bool:
    """Whether run ``run_id`` has a complete resumable (step) checkpoint."""
    return CheckpointManager(workdir.run(run_id) / "checkpoints").latest_step() is not None


def latest_resumable_run(workdir: Workdir) -> str | None:
    """The newest run id with a resumable checkpoint, for ``--resume`` without ``--run-id``."""
    runs = [run for run in workdir.existing_runs() if has_resumable_checkpoint(workdir, run)]
    return runs[-1] if runs else None


def resumable_run(workdir: Workdir, run_id: str | None) -> str:
    """The run ``--resume`` continues: ``run_id``, which must have a checkpoint, or the newest run with one.

    Raises:
        InputError: nothing to resume; it lists the runs that exist (and which have checkpoints).
    """
    chosen = run_id if run_id is not None else latest_resumable_run(workdir)
    if chosen is not None and has_resumable_checkpoint(workdir, chosen):
        return chosen
    listed = [
        f"{run} ({'has checkpoints' if has_resumable_checkpoint(workdir, run) else 'no checkpoint'})"
        for run in workdir.existing_runs()
    ]
    what = f"run {run_id!r} has no checkpoint to resume" if run_id is not None else "no run with checkpoints"
    raise InputError(
        f"resume: {what} under {workdir.runs}",
        [f"runs there: {', '.join(listed) if listed else 'none'}"],
        hint="pass one that has checkpoints with --run-id, or drop --resume to start a new run",
    )


def run_training(
    config,
    workdir: str | Path,
    *,
    overrides: dict | None = None,
    run_id: str | None = None,
    resume: bool = False,
    device: str = "cpu",
    mark_default: bool = True,
):
    """Train (or resume) with metrics into ``train_metrics`` and a loss curve: what ``gill train`` and the flow run.

    Returns ``(TrainResult, loss_curve_path)``.
    """

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, **(overrides or {})))
    work = Workdir.at(workdir)
    if resume:  # nothing to resume is an error listing the runs, before anything is loaded or written
        run_id = resumable_run(work, run_id)
    val = work.split("val") if work.features("val").is_dir() else None  # validation when its features exist
    trainer = setup_training(
        config, work.runs, work.split("train"), val, run_id=run_id, device=device, portable_root=work.root
    )
    reporter = TrainingReporter(workdir, trainer.run_dir.name)
    trainer.sink = reporter.log  # the trainer calls it on rank 0 only
    try:
        result = trainer.train(resume=resume)
    finally:
        _leave_process_group()
    if not trainer.world.is_main:
        return result, None
    if mark_default:
        work.mark_default_run(trainer.run_dir.name)
    return result, reporter.finish(result.history, result.validations)


def _leave_process_group() -> None:

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True, kw_only=True)
class TrainOverrides:
    """The training settings a run may change from its config's ``train`` section (None: the config's value)."""

    steps: int | None = None
    """Optimizer steps (default: the preset's)."""
    batch_size: int | None = None
    """Global batch per step (default: the preset's)."""
    lr: float | None = None
    """Peak learning rate (default: the preset's)."""
    grad_accum: int | None = None
    """Micro-batches per step (default: the preset's)."""
    seed: int | None = None
    """Seed of init, data order and augmentation (default: the preset's)."""

    def __post_init__(self) -> None:
        lows = {"steps": 1, "batch_size": 2, "grad_accum": 1, "seed": 0}
        values = {name: getattr(self, name) for name in lows}
        problems = [
            f"{name}={value!r} (must be an int >= {lows[name]})"
            for name, value in values.items()
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < lows[name])
        ]
        if self.lr is not None and not (isinstance(self.lr, int | float) and self.lr > 0):
            problems.append(f"lr={self.lr!r} (must be a number > 0)")
        if problems:
            raise ConfigError("invalid training overrides", problems)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, as ``TrainOptions.overrides`` takes them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """How the train stage runs (what it trains is the config's ``train`` section plus ``overrides``)."""

    run_id: str | None = None
    """Run folder name under ``<workdir>/runs`` (default: a new id)."""
    resume: bool | Literal["auto"] = False
    """True: continue ``run_id`` (or the latest run) from its newest checkpoint; ``"auto"``: train, resume after a
    crash, or recognise the run as finished (what the pipeline does)."""
    device: str = "cpu"
    """Torch device: cpu or cuda."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Fields of the config's ``train`` section to replace (steps, batch_size, lr, grad_accum, seed, ...)."""
    mark_default: bool = True
    """Make the run the work folder's default checkpoint (not for ablation variants)."""
    data_fingerprint: str | None = None
    """With ``resume="auto"``: a digest of the training features; a run started on other data is set aside."""


@dataclass(frozen=True, kw_only=True)
class TrainOutcome:
    """What the train stage did."""

    run_id: str
    run_dir: Path
    status: str
    """trained, resumed, or already trained."""
    steps: int
    """The run's step count."""
    result: TrainResult | None
    """The trainer's result (None when the run was already trained, or on a non-zero rank under torchrun)."""
    loss_curve: Path | None
    curve: list[dict[str, float | str]]
    """First and last value of each loss and the last validation (from the store)."""


def run(workdir: Workdir, config: GILLConfig, options: TrainOptions) -> TrainOutcome:
    """Train, resume or recognise run ``options.run_id``; metrics into the store, loss curve into the run folder."""
    if options.resume == "auto":
        if options.run_id is None:
            raise ValueError("resume='auto' needs a run_id")
        summary = train_or_resume(
            config,
            workdir.root,
            overrides=dict(options.overrides),
            run_id=options.run_id,
            device=options.device,
            mark_default=options.mark_default,
            data_fingerprint=options.data_fingerprint,
        )
        return TrainOutcome(
            run_id=options.run_id,
            run_dir=Path(summary["run_dir"]),
            status=summary["status"],
            steps=summary["steps"],
            result=None,
            loss_curve=Path(summary["loss_curve"]),
            curve=summary["curve"],
        )
    result, curve = run_training(
        config,
        workdir.root,
        overrides=dict(options.overrides),
        run_id=options.run_id,
        resume=bool(options.resume),
        device=options.device,
        mark_default=options.mark_default,
    )
    return TrainOutcome(
        run_id=result.run_id,
        run_dir=result.run_dir,
        status="resumed" if options.resume else "trained",
        steps=result.steps,
        result=result,
        loss_curve=curve,
        curve=curve_summary(workdir.database, result.run_id) if curve is not None else [],
    )
