"""Flow ``train-adapters``: train GILL's adapters on precomputed targets, with a metrics artifact.

The work is one task (a training run is one process, or ``torchrun`` for several); re-running with
``resume=True`` continues from the newest checkpoint, so a crashed flow run loses at most ``ckpt_every`` steps.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import TrainParams


@task(task_run_name="train adapters {params.run_id}")
def train_task(params: TrainParams) -> dict:
    """Run (or resume) one training run; returns its id, folder, history and best validation R@1."""
    from flows.stages.train import run_training

    names = ("steps", "batch_size", "lr", "seed")
    overrides = {name: getattr(params, name) for name in names if getattr(params, name) is not None}
    result, curve = run_training(
        params.gill_config(),
        params.workdir,
        overrides=overrides,
        run_id=params.run_id,
        resume=params.resume,
        device=params.device,
    )
    return {
        "run_id": result.run_id,
        "run_dir": str(result.run_dir),
        "curve": str(curve),
        "last": result.history[-1] if result.history else {},
        "validations": result.validations,
        "best_t2i_r1": result.best_t2i_r1,
    }


@flow(name="train-adapters", log_prints=True)
def train_adapters_flow(params: TrainParams) -> dict:
    """Train the adapters (paper section 3.4) and publish the final metrics."""
    summary = train_task(params)
    last = {k: round(v, 4) for k, v in summary["last"].items()}
    create_table_artifact(
        key="train-metrics",
        table=[last, *summary["validations"]],
        description=f"run {summary['run_id']}: last logged step and validations",
    )
    markdown = (
        f"Run `{summary['run_id']}` in `{summary['run_dir']}`; loss curve `{summary['curve']}`; "
        f"best val t2i R@1 {summary['best_t2i_r1']:.3f}"
    )
    create_markdown_artifact(key="train-run", markdown=markdown)
    print(f"run {summary['run_id']}: loss {last.get('loss')} (curve {summary['curve']})")
    return summary
