"""Step checkpoints: atomic, newest-first resume, bounded count, and RNG capture."""

from __future__ import annotations

import random

import pytest
import torch

from gill.errors import InputError
from gill.resume import CheckpointManager, capture_rng, restore_rng


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


def test_restored_rng_replays_the_same_random_numbers():
    state = capture_rng()
    first = (random.random(), torch.rand(3))
    restore_rng(state)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_a_run_started_on_other_training_data_is_set_aside_not_resumed(tmp_path):
    """The pipeline passes a digest of the training features: a run of another world is moved aside, never lost."""
    from eval.reports import DATA_STAMP, _set_aside_stale_run

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
