"""Stage ``precompute``: frozen vision features and SD text-encoder targets per image shard (paper section 3.4:
the frozen models run once, training reads their outputs), one ``precompute_shards`` row per shard."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from flows.store import record_precompute
from flows.workdir import Workdir
from gill.config import GILLConfig
from gill.data.precompute import (
    FrozenEncoders,
    PrecomputeOptions,
    ShardResult,
    load_encoders,
    precompute_shard,
    precompute_split,
)


def run(
    workdir: Workdir, split: str, config: GILLConfig, options: PrecomputeOptions, progress: bool = False
) -> list[ShardResult]:
    """Every shard of ``split`` (shards already up to date are skipped); rows recorded in the store."""
    results = precompute_split(workdir.split(split), config, options, portable_root=workdir.root, progress=progress)
    record(workdir, [r.row() for r in results])
    return results


def run_shard(workdir: Workdir, shard: Path, split: str, encoders: Any, options: PrecomputeOptions) -> ShardResult:
    """One shard with already loaded encoders (the flow runs one task per shard; it records the rows after)."""
    return precompute_shard(shard, workdir.split(split), encoders, options, portable_root=workdir.root)


def record(workdir: Workdir, rows: list[dict[str, Any]]) -> None:
    """Store one row per precomputed shard (keys other than the table's columns, such as ``skipped``, are left out)."""
    record_precompute(workdir.database, [{k: v for k, v in r.items() if k != "skipped"} for r in rows])


_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _cached_encoders(config_json: str, options: PrecomputeOptions) -> FrozenEncoders:
    return load_encoders(GILLConfig.from_json(config_json), options)


def encoders_for(config_json: str, options: PrecomputeOptions) -> FrozenEncoders:
    """The frozen encoders for a config, loaded once per process even when tasks run in threads."""
    with _LOAD_LOCK:
        return _cached_encoders(config_json, options)
