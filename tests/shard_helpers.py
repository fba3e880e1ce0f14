"""Test helper: the synthetic world's CC3M pairs as image-shard samples, without running the downloader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from flows.stages.index import existing_bank
from flows.workdir import Workdir
from gill.data.shards import ShardSample, SplitFolders
from gill.retrieval import BankInfo, bank_dir, build_bank

REPO = Path(__file__).resolve().parents[1]


def python_process(code: str, *args: str | Path, **popen) -> subprocess.Popen:
    """``python -c code args`` importing this checkout's gill, with the tests' environment (offline, caches)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env, **popen)


HOLD_RUN_LOCK = """
import sys, time
from gill.resume import RunLock

lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""
"""For :func:`python_process`: take the run lock of the folder ``argv[1]``, say ``locked``, and keep it."""


def killed_python(code: str, *args: str | Path, timeout: float = 300) -> None:
    """Run ``code`` (which kills itself with SIGKILL at the point under test) and check that it died that way."""
    proc = python_process(code, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == -9, f"expected a SIGKILL, got rc {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"


def split_folders(split: str, root: str | Path) -> SplitFolders:
    """A split's folders in the work-folder layout (``data/cc3m/<split>``, ``features/cc3m/<split>``)."""
    return Workdir(Path(root)).split(split)


def bank_in(root: str | Path, checkpoint: str | Path, splits=("train",), **kwargs) -> BankInfo:
    """:func:`gill.retrieval.build_bank` over ``splits`` of the work folder ``root`` into ``root/index/<id>``."""
    work = Workdir(Path(root))
    folders = [work.split(s) for s in splits]
    return build_bank(folders, checkpoint, bank_dir(work.banks, checkpoint), portable_root=work.root, **kwargs)


def setup_in(config, root: str | Path, **kwargs):
    """:func:`gill.train.setup_training` on the work folder ``root``: its train split, its val split when
    precomputed, runs under ``root/runs`` (what the train stage passes)."""
    from gill.train import setup_training

    work = Workdir(Path(root))
    val = work.split("val") if work.features("val").is_dir() else None
    return setup_training(config, work.runs, work.split("train"), val, portable_root=work.root, **kwargs)


def pipeline_in(root: str | Path, checkpoint: str | Path | None = None, **kwargs):
    """``GILLPipeline.from_pretrained`` of the work folder's checkpoint with its bank (when built)."""
    from gill.pipeline import GILLPipeline

    work = Workdir(Path(root))
    ckpt = work.checkpoint(checkpoint)
    return GILLPipeline.from_pretrained(ckpt, bank=existing_bank(work, ckpt), **kwargs)


def world_samples(world, per_shard: int, split: str = "train") -> list[ShardSample]:
    """The world's CC3M pairs of ``split`` as img2dataset samples (key = 5-digit shard id + 4-digit index)."""
    tsv = world.cc3m_train_tsv if split == "train" else world.cc3m_val_tsv
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()]
    return [
        ShardSample(
            key=f"{i // per_shard:05d}{i % per_shard:04d}",
            caption=caption,
            jpeg=Path(unquote(urlparse(url).path)).read_bytes(),
            meta={"url": url},
        )
        for i, (caption, url) in enumerate(rows)
    ]


def trained_workdir(root: Path, world, config, *, steps: int, run_id: str, bank: bool = False) -> Path:
    """``root`` with the world's 16 training pairs sharded and precomputed, a ``steps``-step tiny run (its
    ``final/`` checkpoint) and, with ``bank``, that checkpoint's retrieval bank. Each caller gets its own folder."""
    import dataclasses

    from gill.data.precompute import PrecomputeOptions, precompute_split
    from gill.data.shards import write_image_shard

    work = Workdir(Path(root))
    write_image_shard(work.images("train") / "00000.tar", world_samples(world, 16))
    precompute_split(work.split("train"), config, PrecomputeOptions(batch_size=16), progress=False)
    train = dataclasses.replace(config.train, steps=steps, batch_size=8, warmup_steps=2, log_every=6)
    setup_in(dataclasses.replace(config, train=train), root, run_id=run_id).train()
    if bank:
        bank_in(root, work.checkpoint(), progress=False)
    return root


SMALL_PIPELINE = {
    "world_train": 32,
    "world_val": 8,
    "world_stories": 3,
    "world_dialogs": 3,
    "shard_size": 16,
    "threads": 4,
    "steps": 4,
    "batch_size": 8,
    "candidate_limit": 12,
    "candidate_sd_steps": 2,
    "decision_steps": 20,
    "bench_sd_steps": 2,
    "bench_limit": 3,
    "visdial_rounds": [1, 10],
    "fid_bootstrap": 5,
}
"""PipelineParams fields that make the full pipeline run in about a minute on the tiny preset."""

DEMO_PIPELINE = {**SMALL_PIPELINE, "candidate_limit": 24, "candidate_sd_steps": 10}
"""The small pipeline with enough world candidates (SD at 10 steps) for the judging tests of the demo workdir."""
