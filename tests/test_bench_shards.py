"""Benchmarks sharded over processes: the same rows, images and results as one process, no lost or doubled rows.

The equality tests run a tiny checkpoint (2 training steps, with its bank) on 3 samples of a synthetic world at
2 SD steps and 64x64 pixels: once in this process, once over 2 processes (``--num-workers 2``, and torchrun with
2 CPU ranks), under other run ids in the same work folder.

Tolerance: on CPU a process's float reductions depend on its thread count (torch uses every core of this
process; a worker gets its share of the cores, a torchrun rank 1 thread). Measured on 2 cores (this process
2 threads, workers 1 each): PNGs differ by at most 1 grey level in 0.008% of the values, CLIP similarity by
1.6e-4, LPIPS by 1.7e-6, the ``results`` means by 2.6e-5 and interval ends by 7.8e-5; with equal thread counts
(OMP_NUM_THREADS=1 for both) every PNG and score was bit-identical. The asserted tolerances below keep a margin of
10x or more over those figures; anything a shard got wrong (a seed, a sample, a row) is far outside them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shard_helpers import REPO, trained_workdir

from eval.bench import BenchOptions
from eval.bench_data import read_vist
from flows.stages.bench import run_visdial, run_vist
from flows.stages.bench_record import BenchRecorder
from flows.stages.bench_shards import (
    Launch,
    Sharding,
    ShardOptions,
    ShardRecorder,
    launch_from,
    merge_shard_files,
    shard_root,
)
from flows.store import db_path, query
from gill.errors import ConfigError, InputError
from gill.utils.paths import resolve_stored

KEY = ["benchmark", "setting", "system", "seed", "sample_id"]
PIXEL_TOLERANCE = 2
"""Largest difference of one PNG value (0..255) between a sample's image from one process and from a shard."""
PIXEL_FRACTION = 0.01
"""Largest fraction of a PNG's values that may differ at all."""
SCORE_TOLERANCE = {"clip_sim": 2e-3, "lpips": 1e-4, "p_ret": 1e-5}
RESULT_TOLERANCE = 1e-3
"""Largest difference of a ``results`` mean, interval end or seed spread."""
FAST = dict(sd_steps=2, height=64, width=64, n_boot=200, write_every=2, limit=3, progress=False)


# -- which process scores what ---------------------------------------------------------------------------------------


def test_every_sample_goes_to_exactly_one_shard_and_the_shares_differ_by_at_most_one():
    items = [f"s{i}" for i in range(11)]
    for count in (1, 2, 3, 4):
        shares = [Sharding(index=k, count=count).select(items) for k in range(count)]
        assert sorted(sum(shares, [])) == sorted(items)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert shares == [Sharding(index=k, count=count).select(items) for k in range(count)]  # a re-run: the same
    assert Sharding(index=1, count=3).select(items) == ["s1", "s4", "s7", "s10"]
    with pytest.raises(InputError):
        Sharding(index=2, count=2)


def test_launch_comes_from_torchrun_or_the_shard_options_and_conflicts_are_refused():
    rank1 = launch_from(ShardOptions(), {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert rank1 == Launch(sharding=Sharding(index=1, count=2, distributed=True, local_index=1))
    assert not rank1.sharding.merges
    assert launch_from(ShardOptions(), {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}).sharding.merges
    with pytest.raises(InputError, match="the ranks are the shards"):
        launch_from(ShardOptions(num_workers=2), {"WORLD_SIZE": "2", "RANK": "0"})
    manual = launch_from(ShardOptions(shard_index=1, num_shards=3), {})
    assert manual.sharding == Sharding(index=1, count=3, local_index=1) and not manual.sharding.merges
    assert launch_from(ShardOptions(num_workers=4), {}) == Launch(workers=4)
    assert launch_from(ShardOptions(), {"WORLD_SIZE": "1"}) == Launch()
    with pytest.raises(ConfigError) as err:
        ShardOptions(num_workers=0, shard_index=1)
    assert len(err.value.problems) == 2  # both problems at once
    with pytest.raises(ConfigError, match="shard_index"):
        ShardOptions(shard_index=3, num_shards=3)
    assert Sharding(index=1, count=2, local_index=1).device("cpu") == "cpu"
    assert Sharding(index=1, count=2, local_index=1).device("cuda:0") == "cuda:0"  # an explicit GPU stays


def _row(sample_id: str, status: str = "ok", seed: int = 42, clip: float | None = 0.5) -> dict:
    return {
        "run_id": "r",
        "benchmark": "vist",
        "setting": "1cap",
        "system": "sd",
        "seed": seed,
        "sample_id": sample_id,
        "status": status,
        "skip_reason": None if status == "ok" else "unreadable",
        "clip_sim": clip if status == "ok" else None,
        "context_paths": [],
    }


def test_shard_files_merge_once_per_key_preferring_scored_rows_and_a_second_merge_doubles_nothing(tmp_path):
    first, second = ShardRecorder(tmp_path, "r", 0), ShardRecorder(tmp_path, "r", 1)
    first.write_samples([_row("a"), _row("b", status="skipped")])
    first.write_samples([_row("c", seed=43)])
    second.write_samples([_row("b", clip=0.25), _row("d")])  # b again: scored by another shard after a crash
    folder = shard_root(tmp_path, "r") / "vist" / "1cap"
    assert sorted(p.name for p in folder.iterdir()) == [
        "shard0-00001.parquet",
        "shard0-00002.parquet",
        "shard1-00001.parquet",
    ]
    assert first.scored_keys("vist", "1cap") == {("sd", 42, "a"), ("sd", 43, "c"), ("sd", 42, "b"), ("sd", 42, "d")}
    assert not db_path(tmp_path).exists()  # a shard never writes the store

    database = db_path(tmp_path)
    merged = merge_shard_files(tmp_path, database, "r")
    assert merged["vist"].scored == 4 and merged["vist"].skipped == 0
    rows = query(database, "SELECT * FROM samples ORDER BY seed, sample_id")
    assert list(rows.sample_id) == ["a", "b", "d", "c"] and (rows.status == "ok").all()
    assert rows.set_index("sample_id").clip_sim["b"] == 0.25
    assert not shard_root(tmp_path, "r").exists()  # merged files and their folders are removed
    assert merge_shard_files(tmp_path, database, "r") == {}

    second.write_samples([_row("d", clip=0.75)])  # a file whose rows were stored already (crash before removal)
    assert merge_shard_files(tmp_path, database, "r") == {}  # no row new to the store
    again = query(database, "SELECT * FROM samples")
    assert len(again) == 4 and again.set_index("sample_id").clip_sim["d"] == 0.75
    assert BenchRecorder(tmp_path, "r").scored_keys("vist", "1cap") == first.scored_keys("vist", "1cap")


# -- the same numbers from one process and from several --------------------------------------------------------------


@pytest.fixture(scope="module")
def shard_work(tmp_path_factory, small_world, tiny_config) -> Path:
    """A briefly trained tiny checkpoint with its retrieval bank (equality needs no trained quality)."""
    return trained_workdir(tmp_path_factory.mktemp("shards"), small_world, tiny_config, steps=2, run_id="s", bank=True)


def _samples(work: Path, run_id: str) -> pd.DataFrame:
    frame = query(db_path(work), "SELECT * FROM samples WHERE run_id = ?", [run_id])
    assert not frame.duplicated(KEY).any()
    return frame.set_index(KEY).sort_index()


def _assert_same_samples(work: Path, one: str, other: str, keys=None) -> None:
    a, b = _samples(work, one), _samples(work, other)
    if keys is not None:
        a = a.loc[keys]
    assert list(a.index) == list(b.index)  # the same rows: none lost, none doubled
    for column in ("status", "decision", "ret_key", "sd_seed", "target_rank", "pool_size", "context_length"):
        assert a[column].fillna(-1).astype(str).tolist() == b[column].fillna(-1).astype(str).tolist(), column
    for column, tolerance in SCORE_TOLERANCE.items():
        diff = (a[column].astype(float) - b[column].astype(float)).abs().fillna(0)
        assert diff.max() <= tolerance, (column, diff.max())
    assert (a.generated_path.isna() == b.generated_path.isna()).all()
    images = 0
    for path_a, path_b in zip(a.generated_path, b.generated_path, strict=True):
        if not isinstance(path_a, str):
            continue
        assert path_b == path_a.replace(f"bench/{one}/", f"bench/{other}/")
        x, y = (np.asarray(Image.open(resolve_stored(p, work)), dtype=np.int16) for p in (path_a, path_b))
        assert x.shape == y.shape and np.abs(x - y).max() <= PIXEL_TOLERANCE and (x != y).mean() <= PIXEL_FRACTION
        images += 1
    assert images > 0


def _assert_same_results(work: Path, one: str, other: str) -> None:
    a, b = (
        query(db_path(work), "SELECT * FROM results WHERE run_id = ?", [r]).drop(columns="run_id") for r in (one, other)
    )
    a, b = (f.set_index(["benchmark", "setting", "system", "metric"]).sort_index() for f in (a, b))
    assert list(a.index) == list(b.index) and len(a) > 0
    for column in ("n", "n_skipped", "n_seeds", "pool_size", "metric_model"):
        assert a[column].astype(str).tolist() == b[column].astype(str).tolist(), column
    for column in ("mean", "ci_low", "ci_high", "seed_std"):
        diff = (a[column].astype(float) - b[column].astype(float)).abs().fillna(0)
        assert diff.max() <= RESULT_TOLERANCE, (column, diff.max())


def test_two_worker_processes_give_the_rows_images_and_results_of_one_process(shard_work, small_world, capsys):
    from flows.command.parser import main

    options = BenchOptions(seeds=(42, 43), run_id="one", **FAST)
    vist = small_world.vist_sis_json, small_world.vist_images_dir
    run_vist(shard_work, *vist, settings=("5cap4img",), options=options)
    args = ["bench", "vist", "--workdir", str(shard_work), "--sis-json", str(vist[0]), "--images", str(vist[1])]
    args += ["--settings", "5cap4img", "--seeds", "42,43", "--sd-steps", "2", "--height", "64", "--width", "64"]
    args += ["--n-boot", "200", "--write-every", "2", "--limit", "3", "--no-progress", "--run-id", "two"]
    assert main([*args, "--num-workers", "2"]) == 0
    out = capsys.readouterr().out
    # 3 stories: 7 systems at seed 42, the 4 seed-dependent ones at 43; 2 retrieval systems
    assert "vist: 33 sample rows scored, 0 skipped, 0 already scored (run two)" in out
    assert "vist-retrieval: 6 sample rows scored" in out and "Table 1: VIST" in out
    _assert_same_samples(shard_work, "one", "two")
    _assert_same_results(shard_work, "one", "two")
    logs = [shard_work / "bench" / "workers" / "vist" / f"worker{k}.log" for k in (0, 1)]
    assert "shard 1 of 2: vist: 22 sample rows" in logs[0].read_text()  # stories 0 and 2
    assert "shard 2 of 2: vist: 11 sample rows" in logs[1].read_text()
    assert not shard_root(shard_work, "two").exists()  # every shard file merged and removed


def test_torchrun_ranks_give_the_visdial_rows_of_one_process(shard_work, small_world):
    options = BenchOptions(seeds=(42,), run_id="visdial-one", **FAST)
    visdial = small_world.visdial_json, small_world.visdial_images_dir
    run_visdial(shard_work, *visdial, rounds=(1,), options=options)
    command = ["-m", "flows.command", "bench", "visdial", "--workdir", str(shard_work), "--dialogs-json"]
    command += [str(visdial[0]), "--images", str(visdial[1]), "--rounds", "1", "--seeds", "42", "--sd-steps", "2"]
    command += ["--height", "64", "--width", "64", "--n-boot", "200", "--write-every", "2", "--limit", "3"]
    command += ["--no-progress", "--run-id", "visdial-torchrun"]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "shard 2 of 2: visdial: 7 sample rows scored" in done.stdout  # rank 1: dialog 1 of 3, 7 systems
    assert "visdial: 21 sample rows scored" in done.stdout and "Table 2: VisDial" in done.stdout  # rank 0
    _assert_same_samples(shard_work, "visdial-one", "visdial-torchrun")
    _assert_same_results(shard_work, "visdial-one", "visdial-torchrun")


def test_a_shard_run_alone_writes_only_shard_files_and_the_next_run_merges_them_once(shard_work, small_world, capsys):
    from flows.command.parser import main

    vist = small_world.vist_sis_json, small_world.vist_images_dir
    args = ["bench", "vist", "--workdir", str(shard_work), "--sis-json", str(vist[0]), "--images", str(vist[1])]
    args += ["--settings", "1cap", "--systems", "sd", "--no-retrieval", "--seeds", "42", "--sd-steps", "2"]
    args += [
        "--height",
        "64",
        "--width",
        "64",
        "--n-boot",
        "200",
        "--limit",
        "3",
        "--no-progress",
        "--run-id",
        "resume",
    ]
    stories = read_vist(*vist, limit=3)
    assert main([*args, "--shard-index", "0", "--num-shards", "2"]) == 0  # stories 0 and 2; shard 1 never runs
    out = capsys.readouterr().out
    assert "shard 1 of 2: vist: 2 sample rows scored" in out and "without --shard-index" in out
    assert _samples(shard_work, "resume").empty  # nothing in the store yet
    files = sorted(shard_root(shard_work, "resume").rglob("*.parquet"))
    assert files
    kept = {p: p.read_bytes() for p in files}

    assert main(args) == 0  # merges shard 0's rows, scores story 1 itself, ranks the pool, writes the results
    out = capsys.readouterr().out
    assert "vist: 3 sample rows scored, 0 skipped, 0 already scored" in out
    first = _samples(shard_work, "resume")
    assert sorted(first.index.get_level_values("sample_id")) == sorted(s.story_id for s in stories)
    assert not shard_root(shard_work, "resume").exists()
    results = query(db_path(shard_work), "SELECT * FROM results WHERE run_id = 'resume'")

    for path, data in kept.items():  # as if the merge had committed but crashed before removing its files
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert main(args) == 0
    assert "vist: 0 sample rows scored, 0 skipped, 3 already scored" in capsys.readouterr().out  # merged again
    again = _samples(shard_work, "resume")
    assert list(again.index) == list(first.index)  # no row doubled
    pd.testing.assert_frame_equal(again, first)
    pd.testing.assert_frame_equal(
        query(db_path(shard_work), "SELECT * FROM results WHERE run_id = 'resume'").sort_values(
            ["benchmark", "system", "metric"], ignore_index=True
        ),
        results.sort_values(["benchmark", "system", "metric"], ignore_index=True),
    )


def test_a_worker_stopped_by_bad_input_fails_the_call_with_the_same_error(shard_work, small_world, capsys):
    from flows.command.parser import main

    args = ["bench", "vist", "--workdir", str(shard_work), "--sis-json", str(small_world.vist_sis_json)]
    args += ["--images", str(small_world.vist_images_dir), "--checkpoint", str(shard_work / "nowhere"), "--no-progress"]
    assert main(args) == 2
    alone = capsys.readouterr().err
    assert main([*args, "--num-workers", "2"]) == 2
    assert capsys.readouterr().err == alone and "is not a GILL checkpoint" in alone
