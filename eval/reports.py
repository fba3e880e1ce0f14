"""Reports of pipeline stages: training metrics into DuckDB and a loss-curve PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eval.db import db_path, record_metrics
from eval.plots import plot_curves

CURVES = ("loss", "loss_cap", "loss_lp", "loss_ret", "loss_gen")


class TrainingReporter:
    """Receives a trainer's ``(step, metrics)`` and writes ``train_metrics``; draws the curve at the end."""

    def __init__(self, workdir: str | Path, run_id: str) -> None:
        self.database = db_path(workdir)
        self.run_id = run_id
        self.run_dir = Path(workdir) / "runs" / run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        """One step's metrics (training or validation names) into the database."""
        record_metrics(self.database, self.run_id, step, values)

    def finish(self, history: Sequence[dict[str, float]]) -> Path:
        """Write ``<run>/loss_curve.png`` from the logged history."""
        series = {name: [(h["step"], h[name]) for h in history if name in h] for name in CURVES}
        return plot_curves(series, self.run_dir / "loss_curve.png", title=f"GILL adapters, run {self.run_id}")


def run_training(
    config, workdir: str | Path, *, overrides: dict | None = None, run_id: str | None = None,
    resume: bool = False, device: str = "cpu",
):  # fmt: skip
    """Train (or resume) with metrics into ``train_metrics`` and a loss curve: what ``gill train`` and the flow run.

    Returns ``(TrainResult, loss_curve_path)``.
    """
    import dataclasses

    from gill.errors import InputError
    from gill.train import latest_run, setup_training

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, **(overrides or {})))
    run_id = run_id or (latest_run(workdir) if resume else None)
    if resume and run_id is None:
        raise InputError(f"resume: no run with checkpoints under {Path(workdir) / 'runs'}", hint="start a new run")
    trainer = setup_training(config, workdir, run_id=run_id, device=device)
    reporter = TrainingReporter(workdir, trainer.run_dir.name)
    trainer.sink = reporter.log  # the trainer calls it on rank 0 only
    try:
        result = trainer.train(resume=resume)
    finally:
        _leave_process_group()
    return result, reporter.finish(result.history) if trainer.world.is_main else None


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
