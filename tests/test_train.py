"""Adapter training on the tiny preset: losses fall, resume is exact, two processes equal one."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from shard_helpers import setup_in, split_folders, world_samples

from gill.data.precompute import PrecomputeOptions, precompute_split
from gill.data.shards import write_image_shard
from gill.presets import get_preset

PER_SHARD = 8


def tiny_train_config(**train):
    config = get_preset("tiny")
    base = dict(batch_size=8, warmup_steps=2, decay_every=1000, log_every=1, val_every=1000, ckpt_every=1000)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **{**base, **train}))


@pytest.fixture(scope="module")
def workdir(tiny_config, small_world, tmp_path_factory) -> Path:
    """16 training pairs of the shapes world as image shards, with precomputed targets."""
    root = tmp_path_factory.mktemp("train-work")
    samples = world_samples(small_world, PER_SHARD)
    for shard in range(2):
        write_image_shard(
            split_folders("train", root).images / f"{shard:05d}.tar", samples[shard * 8 : (shard + 1) * 8]
        )
    precompute_split(split_folders("train", root), tiny_config, PrecomputeOptions(batch_size=8), progress=False)
    return root


def losses(history, names=("loss", "loss_cap", "loss_lp", "loss_ret", "loss_gen")):
    return [[h[n] for n in names] for h in history]


@pytest.fixture(scope="module")
def learning_workdir(tiny_config, tmp_path_factory) -> Path:
    """192 training and 48 validation pairs of a fresh shapes world, sharded and precomputed."""
    from gill.synth import SynthConfig, synthesize_world

    root = tmp_path_factory.mktemp("learn-work")
    world = synthesize_world(
        root / "world",
        SynthConfig(seed=11, n_train=192, n_val=48, n_stories=1, n_dialogs=1, image_size=32),
        progress=False,
    )
    for split in ("train", "val"):
        samples = world_samples(world, 64, split)
        for shard in range(0, len(samples), 64):
            write_image_shard(split_folders(split, root).images / f"{shard // 64:05d}.tar", samples[shard : shard + 64])
        precompute_split(split_folders(split, root), tiny_config, PrecomputeOptions(batch_size=64), progress=False)
    return root


def test_training_lowers_every_loss_and_lifts_validation_recall_far_above_chance(learning_workdir):
    steps = 240
    config = tiny_train_config(
        steps=steps, batch_size=16, warmup_steps=20, decay_every=160, val_every=steps, ckpt_every=steps
    )
    result = setup_in(config, learning_workdir, run_id="learn").train()

    def mean(name, rows):
        return sum(h[name] for h in rows) / len(rows)

    early, late = result.history[:10], result.history[-10:]
    # the world SD's text encoder gives 77 distinct per-token targets; in 240 steps loss_gen falls to about 57% of
    # its start (the science tests check that the trained mapper draws the right scenes)
    assert mean("loss_gen", late) < 0.7 * mean("loss_gen", early)
    assert mean("loss_cap", late) < 0.8 * mean("loss_cap", early)  # the image prefix steers the pre-trained LM
    assert mean("loss_ret", late) < 0.7 * mean("loss_ret", early)
    assert mean("loss_lp", late) < mean("loss_lp", early) and mean("loss", late) < mean("loss", early)
    assert all(torch.isfinite(torch.tensor(v)) for h in result.history for v in h.values())
    (final,) = result.validations
    chance = 1 / 48
    assert final["val_t2i_r1"] >= 8 * chance and final["val_i2t_r1"] >= 8 * chance, final
    assert final["val_t2i_r5"] >= 4 * 5 * chance, final
    assert (learning_workdir / "runs" / "learn" / "checkpoints" / f"step-{steps:08d}").is_dir()
    assert (learning_workdir / "runs" / "learn" / "best" / "adapters.safetensors").is_file()


def test_a_resumed_run_reproduces_the_uninterrupted_losses(workdir):
    full = setup_in(tiny_train_config(steps=8, ckpt_every=4), workdir, run_id="full").train()
    setup_in(tiny_train_config(steps=4, ckpt_every=4), workdir, run_id="split").train()
    resumed = setup_in(tiny_train_config(steps=8, ckpt_every=4), workdir, run_id="split").train(resume=True)
    assert [h["step"] for h in resumed.history] == list(range(1, 9))
    assert losses(resumed.history) == losses(full.history)  # bit-identical on CPU in fp32


def _ddp_worker(rank: int, world_size: int, store: str, workdir: str, out: str) -> None:
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        result = setup_in(tiny_train_config(steps=3), Path(workdir), run_id="ddp").train()
        if rank == 0:
            torch.save({"losses": losses(result.history)}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_same_global_batch(workdir, tmp_path):
    single = setup_in(tiny_train_config(steps=3), workdir, run_id="single").train()
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(workdir), str(out)), nprocs=2, join=True)
    ddp = torch.tensor(torch.load(out)["losses"])
    assert torch.allclose(ddp, torch.tensor(losses(single.history)), rtol=1e-4, atol=1e-5)
    ddp_weights = workdir / "runs" / "ddp" / "checkpoints" / "step-00000003" / "adapters.safetensors"
    single_weights = workdir / "runs" / "single" / "checkpoints" / "step-00000003" / "adapters.safetensors"
    from safetensors.torch import load_file

    a, b = load_file(str(ddp_weights)), load_file(str(single_weights))
    assert a.keys() == b.keys()
    # Adam's first steps move each weight by about lr (1e-3); summation-order noise in near-zero gradients can
    # shift an update by ~1e-5, so weights must agree to 1e-4 (a tenth of one update).
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4) for k in a)


def test_gill_train_command_records_metrics_and_draws_the_curve(workdir, capsys):
    from flows.command.parser import main
    from flows.store import db_path, query

    argv = ["train", "--workdir", str(workdir), "--steps", "6", "--batch-size", "8", "--run-id", "cli"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "run cli: 6 steps" in out and "loss_curve.png" in out
    rows = query(db_path(workdir), "SELECT step, value FROM train_metrics WHERE run_id = 'cli' AND name = 'loss'")
    assert sorted(rows["step"]) == [5, 6]  # the tiny preset logs every 5 steps and at the last one
    assert (workdir / "runs" / "cli" / "loss_curve.png").stat().st_size > 1000
    assert (workdir / "runs" / "cli" / "loss_curve.pdf").read_bytes()[:5] == b"%PDF-"  # the same curves, for print
    assert main(["train", "--workdir", str(workdir / "empty"), "--resume"]) == 2
    assert "no run with checkpoints" in capsys.readouterr().err


def test_gill_train_refuses_a_run_another_process_is_training_and_changes_nothing(workdir, capsys):
    import subprocess

    from shard_helpers import HOLD_RUN_LOCK, python_process

    from flows.command.parser import main

    run = workdir / "runs" / "busy"
    holder = python_process(HOLD_RUN_LOCK, run, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["train", "--workdir", str(workdir), "--steps", "2", "--batch-size", "8", "--run-id", "busy"]
        assert main(argv) == 2
        assert "run 'busy' is being trained by another process" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == ["train.lock"]  # no config.json, no checkpoint
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0  # the holder is gone: the run trains


def test_gill_train_resume_of_a_run_without_checkpoints_fails_listing_the_runs(workdir, capsys):
    from flows.command.parser import main
    from gill.resume import CheckpointManager

    CheckpointManager(workdir / "runs" / "resumable" / "checkpoints").save(2, {"w": torch.ones(1)}, {})
    (workdir / "runs" / "fresh").mkdir(parents=True, exist_ok=True)
    argv = ["train", "--workdir", str(workdir), "--steps", "1", "--batch-size", "8", "--resume", "--run-id", "typo"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "run 'typo' has no checkpoint to resume" in err
    assert "resumable (has checkpoints)" in err and "fresh (no checkpoint)" in err and "--run-id" in err
    assert not (workdir / "runs" / "typo").exists()


def test_gill_train_under_torchrun_matches_a_single_process_run(workdir, tmp_path):
    import subprocess
    import sys

    from flows.command.parser import main
    from flows.store import db_path, query

    args = ["train", "--workdir", str(workdir), "--steps", "5", "--batch-size", "8"]
    assert main([*args, "--run-id", "one-process"]) == 0
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "flows.command",
        *args,
        "--run-id",
        "torchrun",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run torchrun: 5 steps") == 1  # rank 0 reports, once
    sql = "SELECT run_id, name, value FROM train_metrics WHERE step = 5 AND name LIKE 'loss%' ORDER BY name"
    rows = query(db_path(workdir), sql)
    single = rows[rows.run_id == "one-process"].set_index("name")["value"]
    multi = rows[rows.run_id == "torchrun"].set_index("name")["value"]
    assert list(multi.index) == list(single.index) == ["loss", "loss_cap", "loss_gen", "loss_lp", "loss_ret"]
    assert torch.allclose(torch.tensor(multi.values), torch.tensor(single.values), rtol=1e-4, atol=1e-5)


# -- the objective: paper-exact mode, exact multi-process gradients, validation BLEU -----------------------------


def _first_batch(trainer):
    return trainer._local(next(trainer._optimizer_steps(trainer.cfg.batch_size))[0])


def _lp_over_even_rows(trainer, batch) -> float:
    """By hand: l_p of the first segments only. In a concatenated row the first segment's logits are those of
    the even example run alone (causal LM), so this is the mean CE over the even examples' caption and [IMG0]."""
    from gill import losses as L

    even = slice(0, None, 2)
    ids, mask = batch.input_ids[even], batch.attention_mask[even]
    logits = trainer.model.forward_lm(trainer.model.embed_tokens(ids), mask).logits
    return float(L.lm_loss(logits, L.lp_labels(ids, mask, trainer.img_ids)))


def test_the_paper_exact_objective_gives_the_second_segment_no_lp_and_averages_two_passes(workdir):
    exact = setup_in(tiny_train_config(steps=1, paper_exact=True, concat_prob=1.0), workdir, run_id="exact")
    assert exact.objective.separate_mode_passes and not exact.objective.lp_second_segment
    batch = _first_batch(exact)
    with torch.no_grad():
        _, report = exact.losses(batch)
        by_hand = _lp_over_even_rows(exact, batch)
    assert report["loss_lp"] == pytest.approx(by_hand, rel=1e-5)  # 0.5 * l_p[ret] + 0.5 * l_p[gen], equal here
    ours = setup_in(tiny_train_config(steps=1, concat_prob=1.0), workdir, run_id="ours")
    with torch.no_grad():
        _, fixed = ours.losses(_first_batch(ours))
    assert fixed["loss_lp"] != pytest.approx(by_hand, rel=1e-3)  # our default also trains the second caption


def test_the_official_two_process_weighting_halves_the_adapters_contrastive_gradient_only(workdir):
    grads = {}
    for world in (1, 2):
        trainer = setup_in(
            tiny_train_config(steps=1, contrastive_official_world=world), workdir, run_id=f"weight{world}"
        )
        trainer.accumulate_gradients(next(trainer._optimizer_steps(trainer.cfg.batch_size)))
        grads[world] = {n: p.grad.clone() for n, p in trainer.model.adapters.named_parameters() if p.grad is not None}
    for name in ("retrieval.text_proj.weight", "retrieval.image_proj.weight"):  # only the contrastive loss reaches them
        torch.testing.assert_close(grads[2][name], 0.5 * grads[1][name])
    torch.testing.assert_close(grads[2]["retrieval.logit_scale"], grads[1]["retrieval.logit_scale"])


def _gradient_worker(rank: int, world_size: int, store: str, workdir: str, out: str) -> None:
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        trainer = setup_in(tiny_train_config(steps=1), Path(workdir), run_id="grad-ddp")
        trainer.accumulate_gradients(next(trainer._optimizer_steps(trainer.cfg.batch_size)))
        if rank == 0:
            torch.save({n: p.grad for n, p in trainer.model.adapters.named_parameters() if p.grad is not None}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_give_every_parameter_the_single_process_gradient_logit_scale_included(workdir, tmp_path):
    single = setup_in(tiny_train_config(steps=1), workdir, run_id="grad-single")
    single.accumulate_gradients(next(single._optimizer_steps(single.cfg.batch_size)))
    expected = {n: p.grad for n, p in single.model.adapters.named_parameters() if p.grad is not None}
    out = tmp_path / "grads.pt"
    mp.spawn(_gradient_worker, args=(2, str(tmp_path / "store"), str(workdir), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    assert got.keys() == expected.keys() and "retrieval.logit_scale" in got
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_validation_reports_bleu_of_greedy_captions_and_the_clamp_is_a_training_option(learning_workdir):
    import math

    trainer = setup_in(tiny_train_config(steps=1, logit_scale_max=math.log(20.0)), learning_workdir, run_id="bleu")
    values = trainer.validate()
    assert all(0.0 <= values[f"val_bleu{n}"] <= 1.0 for n in (1, 2, 3, 4))
    assert values["val_bleu1"] >= values["val_bleu4"]
    with torch.no_grad():
        trainer.model.adapters.retrieval.logit_scale.fill_(5.0)
    trainer.train_step(next(trainer._optimizer_steps(trainer.cfg.batch_size)))
    assert trainer.model.adapters.retrieval.logit_scale.item() == pytest.approx(math.log(20.0))
