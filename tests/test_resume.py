"""Step checkpoints: atomic (also under SIGKILL), newest-first resume, bounded count, RNG capture, weights-only
loading, and one process per run."""

from __future__ import annotations

import os
import random
import subprocess

import numpy as np
import pytest
import torch
from shard_helpers import HOLD_RUN_LOCK, killed_python, python_process

from gill.errors import InputError
from gill.resume import CheckpointManager, RunLock, capture_rng, restore_rng


def test_save_load_round_trip_and_keep_last(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    for step in (10, 20, 30):
        manager.save(step, {"w": torch.full((2,), float(step))}, {"position": {"epoch": 0, "start": step * 4}})
    assert manager.steps() == [20, 30]
    latest = manager.load()
    assert latest.step == 30 and torch.equal(latest.weights["w"], torch.full((2,), 30.0))
    assert latest.state["position"] == {"epoch": 0, "start": 120}
    assert manager.load(20).step == 20
    with pytest.raises(InputError, match="available steps: \\[20, 30\\]"):
        manager.load(10)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(1, {"w": torch.ones(1)}, {})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        manager.save(2, {"w": torch.zeros(1)}, {})
    assert manager.steps() == [1] and manager.load().step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


def test_restored_rng_replays_the_same_random_numbers_after_a_weights_only_round_trip(tmp_path):
    random.gauss(0, 1), np.random.normal()  # both keep a cached gaussian in their state
    manager = CheckpointManager(tmp_path)
    path = manager.save(1, {"w": torch.ones(1)}, {"rng": capture_rng(), "position": {"epoch": 1, "start": 8}})
    first = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.normal(), torch.rand(3))
    state = torch.load(path / "train_state.pt", weights_only=True)  # tensors and plain containers only
    restore_rng(state["rng"])
    second = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.normal(), torch.rand(3))
    assert first[:2] == second[:2] and np.array_equal(first[2], second[2]) and first[3] == second[3]
    assert torch.equal(first[4], second[4])


def test_a_train_state_that_would_run_code_is_refused_and_the_payload_never_runs(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints")
    path = manager.save(3, {"w": torch.ones(1)}, {"position": {"epoch": 0, "start": 24}})
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)  # what an untrusted run folder could do when unpickled

    torch.save({"step": 3, "position": Payload()}, path / "train_state.pt")
    with pytest.raises(InputError) as err:
        manager.load()
    message = err.value.render()
    assert f"refused to load {path / 'train_state.pt'}" in message and "weights-only" in message
    assert "trust" in message
    assert not marker.exists()


KILLED_SAVE = """
import os, shutil, signal, sys
from pathlib import Path
import torch
from gill.resume import CheckpointManager

manager = CheckpointManager(sys.argv[1], keep_last=1)
manager.save(1, {"w": torch.ones(2)}, {"n": 1})
if sys.argv[2] == "writing":  # half of train_state.pt written, then killed
    def dying_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\\x03\\x04 half a zip")
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = dying_save
else:  # killed while deleting the step that keep_last drops, one file already gone
    def dying_rmtree(path, *args, **kwargs):
        (Path(path) / "adapters.safetensors").unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    shutil.rmtree = dying_rmtree
manager.save(2, {"w": torch.zeros(2)}, {"n": 2})
"""


@pytest.mark.parametrize("moment", ["writing", "pruning"])
def test_a_kill_during_a_checkpoint_write_leaves_whole_checkpoints_and_the_next_save_cleans_up(tmp_path, moment):
    killed_python(KILLED_SAVE, tmp_path, moment)
    manager = CheckpointManager(tmp_path, keep_last=1)
    expected = {"writing": [1], "pruning": [2]}[moment]  # the old checkpoint, or the new one: never a mix
    assert manager.steps() == expected
    for step in manager.steps():
        loaded = manager.load(step)
        assert loaded.state == {"n": step} and torch.equal(loaded.weights["w"], torch.full((2,), float(step == 1)))
    assert any(p.name.startswith(".") for p in tmp_path.iterdir())  # the killed process's leftover
    manager.save(3, {"w": torch.ones(2)}, {"n": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003"]


def test_a_run_locked_by_another_process_is_refused_naming_the_run_until_that_process_dies(tmp_path):
    run = tmp_path / "runs" / "busy"
    holder = python_process(HOLD_RUN_LOCK, run, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError) as err:
            RunLock(run).acquire()
        message = err.value.render()
        assert "run 'busy' is being trained by another process" in message and f"pid {holder.pid}" in message
        assert "--run-id" in message
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run) as lock:  # the kernel dropped the killed holder's lock
        assert lock.held
    assert not lock.held


def test_a_run_started_on_other_training_data_is_set_aside_not_resumed(tmp_path):
    """The pipeline passes a digest of the training features: a run of another world is moved aside, never lost."""
    from flows.stages.train import DATA_STAMP, _set_aside_stale_run

    run = tmp_path / "runs" / "pipeline"
    (run / "checkpoints" / "step-200").mkdir(parents=True)
    (run / DATA_STAMP).write_text("world-v1\n")
    _set_aside_stale_run(run, "world-v1")  # same data: kept for resuming
    assert (run / "checkpoints" / "step-200").is_dir()
    _set_aside_stale_run(run, "world-v2")
    assert not run.exists() and (tmp_path / "runs" / "pipeline.stale-1" / "checkpoints" / "step-200").is_dir()
    (run / "final").mkdir(parents=True)  # a run from before fingerprints were recorded is set aside as well
    _set_aside_stale_run(run, "world-v2")
    assert (tmp_path / "runs" / "pipeline.stale-2" / "final").is_dir() and not run.exists()
