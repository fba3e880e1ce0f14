"""Flow ``precompute-targets``: one task per image shard, so a Dask task runner can spread the work.

Each task loads the frozen encoders once per worker process (cached) and writes one fingerprinted feature
shard; re-runs skip shards whose fingerprint matches. To scale out, swap the task runner::

    from prefect_dask import DaskTaskRunner
    precompute_targets_flow.with_options(task_runner=DaskTaskRunner(address="tcp://scheduler:8786"))(params)
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact

from flows.options import options_from
from flows.params import PrecomputeParams
from flows.stages import precompute as precompute_stage
from flows.tasks import file_digest, precompute_task
from flows.workdir import Workdir
from gill.data.precompute import PrecomputeOptions
from gill.data.shards import complete_image_shards


@flow(name="precompute-targets", log_prints=True)
def precompute_targets_flow(params: PrecomputeParams) -> dict:
    """Precompute GILL's frozen targets (paper section 3: CLIP features, SD text-encoder outputs)."""
    config_json = params.gill_config().to_json()
    options = options_from(PrecomputeOptions, params)
    shards = complete_image_shards(Workdir.at(params.workdir).images(params.split))
    futures = precompute_task.map(
        shards,
        [file_digest(s) for s in shards],
        split=unmapped(params.split),
        workdir=unmapped(params.workdir),
        config_json=unmapped(config_json),
        options=unmapped(options),
    )
    rows = [f.result() for f in futures]
    workdir = Workdir.at(params.workdir)
    precompute_stage.record(workdir, rows)
    database = workdir.database
    create_table_artifact(
        key=f"precompute-{params.split}",
        table=rows,
        description=f"{len(rows)} feature shards for {params.split}",
    )
    computed = sum(not r["skipped"] for r in rows)
    print(f"{len(rows)} shards ({computed} computed, {len(rows) - computed} up to date) -> {database}")
    return {"shards": len(rows), "computed": computed, "samples": sum(r["count"] for r in rows)}
