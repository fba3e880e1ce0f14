"""Flow ``precompute-targets``: one task per image shard, so a Dask task runner can spread the work.

Each task loads the frozen encoders once per worker process (cached) and writes one fingerprinted feature
shard; re-runs skip shards whose fingerprint matches. To scale out, swap the task runner::

    from prefect_dask import DaskTaskRunner
    precompute_targets_flow.with_options(task_runner=DaskTaskRunner(address="tcp://scheduler:8786"))(params)
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact

from flows.params import PrecomputeParams
from gill.config import GILLConfig
from gill.data.precompute import FrozenEncoders, PrecomputeOptions, ShardResult, image_shards, load_encoders

_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _cached_encoders(config_json: str, options: PrecomputeOptions) -> FrozenEncoders:
    return load_encoders(GILLConfig.from_json(config_json), options)


def encoders_for(config_json: str, options: PrecomputeOptions) -> FrozenEncoders:
    """The frozen encoders for a config, loaded once per process even when tasks run in threads."""
    with _LOAD_LOCK:
        return _cached_encoders(config_json, options)


@task(task_run_name="precompute {split} shard {shard_tar.stem}")
def precompute_shard_task(
    shard_tar: Path, split: str, workdir: Path, config_json: str, options: PrecomputeOptions
) -> ShardResult:
    """Compute (or skip, if its fingerprint matches) the feature shard of one image shard."""
    from gill.data.precompute import precompute_shard

    return precompute_shard(shard_tar, split, workdir, encoders_for(config_json, options), options)


@task(task_run_name="record precompute {split}")
def record_precompute_task(workdir: Path, split: str, results: list[ShardResult]) -> str:
    """One row per shard into <workdir>/gill.duckdb (table precompute_shards)."""
    from eval.db import db_path, record_precompute

    record_precompute(db_path(workdir), [r.row() for r in results])
    return str(db_path(workdir))


@flow(name="precompute-targets", log_prints=True)
def precompute_targets_flow(params: PrecomputeParams) -> dict:
    """Precompute GILL's frozen targets (paper section 3: CLIP features, SD text-encoder outputs)."""
    config_json = params.gill_config().to_json()
    options = PrecomputeOptions(batch_size=params.batch_size, device=params.device, dtype=params.dtype)
    shards = image_shards(params.split, params.workdir)
    futures = precompute_shard_task.map(
        shards,
        split=unmapped(params.split),
        workdir=unmapped(params.workdir),
        config_json=unmapped(config_json),
        options=unmapped(options),
    )
    results = [f.result() for f in futures]
    database = record_precompute_task(params.workdir, params.split, results)
    create_table_artifact(
        key=f"precompute-{params.split}",
        table=[r.row() for r in results],
        description=f"{len(results)} feature shards for {params.split}",
    )
    computed = sum(not r.skipped for r in results)
    print(f"{len(results)} shards ({computed} computed, {len(results) - computed} up to date) -> {database}")
    return {"shards": len(results), "computed": computed, "samples": sum(r.count for r in results)}
