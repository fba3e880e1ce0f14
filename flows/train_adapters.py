"""Flow ``train-adapters``: train GILL's adapters on precomputed targets, with a metrics artifact.

The work is one task (a training run is one process, or ``torchrun`` for several); re-running with
``resume=True`` continues from the newest checkpoint, so a crashed flow run loses at most ``ckpt_every`` steps.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.options import options_from
from flows.params import TrainParams
from flows.stages.train import TrainOverrides
from flows.tasks import train_task


@flow(name="train-adapters", log_prints=True)
def train_adapters_flow(params: TrainParams) -> dict:
    """Train the adapters (paper section 3.4) and publish the final metrics."""
    config_json = params.gill_config().to_json()
    overrides = options_from(TrainOverrides, params).as_dict()
    summary = train_task(params.workdir, config_json, overrides, params.run_id, [], params.device, resume=params.resume)
    summary["curve"] = summary["loss_curve"]
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
