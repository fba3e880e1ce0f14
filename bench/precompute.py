"""How close the precompute stage comes to the speed of the two frozen forwards it exists to run.

Run: ``.venv/bin/python bench/precompute.py [--images 128] [--rounds 2] [--threads 2]``. For two model sizes it
measures, on the same images and captions:

* **stage**: :func:`gill.data.precompute.precompute_shard` end to end into a fresh folder (hash and index the tar,
  read members, decode JPEGs, image processor, SD tokenizer, both encoders, write ``.npy`` files and manifest);
* **bare**: only ``FrozenEncoders.encode`` (vision ``pooler_output`` + SD ``last_hidden_state``) over the same
  batches, preprocessed beforehand;

and prints samples/s and the ratio stage/bare (goal >= 0.9). The CPU this runs on may be shared, so bare and
stage alternate shard by shard and the ratio reported is the **median of same-shard pairs** (with its range),
next to the best rate of each. Three stage variants: inputs prepared inline (no overlap), in one background
thread (the default), and in 2 DataLoader worker processes (the setting for a GPU machine). The serial cost of
each non-forward part is printed too, so a low ratio can be traced.

Sizes: the ``tiny`` preset (vision width 48 at 32 px: its forward is cheaper than decoding one 256 px JPEG, so
its ratio measures pure overhead) and a mid-size pair built on the fly (CLIP ViT width 384, 6 layers, 128 px,
patch 16; CLIP text width 384, 6 layers) saved into a temp zoo. Images: synthetic CC3M JPEGs at 256 px in
img2dataset webdataset shards of 64.

Measured on 2 shared CPU cores (AMD EPYC, quiet moment): tiny 0.23-0.25 (the 0.4 ms/sample forward is cheaper
than read + decode + preprocess + tokenise, ~0.94 ms/sample, which no overlap on 2 cores can hide); mid-size
0.93-0.96 with the default thread (the non-forward parts are ~4% of a 25-30 ms/sample forward). Worker processes
lose on 2 cores (they compete with the forward's threads) and are meant for GPU machines.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import torch

from gill.config import GILLConfig
from gill.data.precompute import (
    FrozenEncoders,
    PrecomputeOptions,
    decode_image,
    load_encoders,
    precompute_shard,
)
from gill.data.shards import (
    ShardSample,
    SplitFolders,
    complete_image_shards,
    index_shard,
    read_samples,
    write_image_shard,
)
from gill.presets import get_preset, tiny_zoo_dir
from gill.synth import SynthConfig, synthesize_world

SPLIT = "bench"


def split_folders(workdir: Path) -> SplitFolders:
    """The benchmark's image and feature folders."""
    return SplitFolders(name=SPLIT, images=workdir / "images", features=workdir / "features")


PER_SHARD = 64
BATCH = 32
VARIANTS = {
    "no overlap": {"num_workers": 0, "prefetch": 0},
    "thread (default)": {"num_workers": 0},
    "2 workers": {"num_workers": 2},
}
"""Stage variants: read/decode/preprocess/tokenise inline, in one background thread, or in 2 worker processes."""


@dataclass(kw_only=True)
class ShardInputs:
    """One shard's encoder inputs, prepared before timing the bare forward."""

    tar: Path
    pixels: list[torch.Tensor]
    """Per batch: (B, 3, H, W)."""
    ids: list[torch.Tensor]
    """Per batch: (B, 77)."""
    count: int


@dataclass(kw_only=True)
class Measurement:
    """One size's results."""

    name: str
    bare: list[float] = field(default_factory=list)
    """samples/s of each bare pass (one per shard and round)."""
    stage: dict[str, list[float]] = field(default_factory=dict)
    """samples/s of each stage pass per variant, paired with ``bare``."""
    parts_ms: dict[str, float] = field(default_factory=dict)
    """ms per sample of each non-forward part, run serially."""


def write_shards(workdir: Path, n_images: int) -> None:
    """The synthetic world's CC3M pairs as img2dataset shards of PER_SHARD samples."""
    config = SynthConfig(seed=1, n_train=n_images, n_val=1, n_stories=1, n_dialogs=1, image_size=256)
    world = synthesize_world(workdir / "world", config, progress=False)
    rows = [line.split("\t") for line in world.cc3m_train_tsv.read_text(encoding="utf-8").splitlines()]
    samples = [
        ShardSample(
            key=f"{i // PER_SHARD:05d}{i % PER_SHARD:04d}",
            caption=caption,
            meta={},
            jpeg=Path(unquote(urlparse(url).path)).read_bytes(),
        )
        for i, (caption, url) in enumerate(rows)
    ]
    for start in range(0, n_images, PER_SHARD):
        tar = split_folders(workdir).images / f"{start // PER_SHARD:05d}.tar"
        write_image_shard(tar, samples[start : start + PER_SHARD])


def mid_config(root: Path) -> GILLConfig:
    """The tiny preset with its vision encoder and SD text encoder replaced by mid-size random ones."""
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    zoo = tiny_zoo_dir()
    shutil.copytree(
        zoo / "clip", root / "clip", ignore=shutil.ignore_patterns("*.safetensors", "processor_config.json")
    )
    shutil.copytree(zoo / "sd", root / "sd", ignore=shutil.ignore_patterns("text_encoder"))
    torch.manual_seed(0)
    width = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 6}
    CLIPVisionModel(CLIPVisionConfig(**width, image_size=128, patch_size=16)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 128}, crop_size={"height": 128, "width": 128}).save_pretrained(
        root / "clip"
    )
    tiny = CLIPTextConfig.from_pretrained(zoo / "sd" / "text_encoder")
    text = CLIPTextConfig(
        **width,
        vocab_size=tiny.vocab_size,
        max_position_embeddings=77,
        bos_token_id=tiny.bos_token_id,
        eos_token_id=tiny.eos_token_id,
        pad_token_id=tiny.pad_token_id,
    )
    CLIPTextModel(text).save_pretrained(root / "sd" / "text_encoder")
    return get_preset("tiny").with_backbones(vision=str(root / "clip"), sd=str(root / "sd"))


def seconds(fn: Callable[..., object], *args: object) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def prepare(tar: Path, encoders: FrozenEncoders, parts: dict[str, float]) -> ShardInputs:
    """Read, decode, preprocess and tokenise one shard serially, adding each part's seconds to ``parts``."""
    start = time.perf_counter()
    index = index_shard(tar)
    samples = read_samples(index, index.image_keys)
    parts["read tar"] = parts.get("read tar", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    images = [decode_image(s, tar.name) for s in samples]
    parts["decode"] = parts.get("decode", 0.0) + time.perf_counter() - start
    chunks = [slice(i, i + BATCH) for i in range(0, len(samples), BATCH)]
    start = time.perf_counter()
    pixels = [encoders.preprocess(images[c]) for c in chunks]  # each (B, 3, H, W)
    parts["preprocess"] = parts.get("preprocess", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    ids = [encoders.tokenize([s.caption for s in samples[c]]) for c in chunks]  # each (B, 77)
    parts["tokenize"] = parts.get("tokenize", 0.0) + time.perf_counter() - start
    return ShardInputs(tar=tar, pixels=pixels, ids=ids, count=len(samples))


def bare_rate(encoders: FrozenEncoders, inputs: ShardInputs) -> float:
    """samples/s of the two forwards alone over one shard's prepared batches."""
    start = time.perf_counter()
    for pixels, ids in zip(inputs.pixels, inputs.ids, strict=True):
        encoders.encode(pixels, ids)
    return inputs.count / (time.perf_counter() - start)


def stage_rate(workdir: Path, inputs: ShardInputs, encoders: FrozenEncoders, options: PrecomputeOptions) -> float:
    """samples/s of precompute_shard on one shard, into a fresh feature folder."""
    shutil.rmtree(split_folders(workdir).features / inputs.tar.stem, ignore_errors=True)
    start = time.perf_counter()
    count = precompute_shard(inputs.tar, split_folders(workdir), encoders, options).count
    return count / (time.perf_counter() - start)


def measure(name: str, config: GILLConfig, workdir: Path, rounds: int) -> Measurement:
    """Alternate bare and stage shard by shard (so each pair sees the same machine load); round 0 warms up."""
    encoders = load_encoders(config, PrecomputeOptions(batch_size=BATCH))
    result = Measurement(name=name, stage={v: [] for v in VARIANTS})
    tars = complete_image_shards(split_folders(workdir).images)
    prepare(tars[0], encoders, {})  # warm-up: first calls of processor and tokenizer
    seconds_per_part: dict[str, float] = {}
    shards = [prepare(tar, encoders, seconds_per_part) for tar in tars]
    n = sum(s.count for s in shards)
    out = encoders.encode(shards[0].pixels[0], shards[0].ids[0])
    write = seconds(np.save, workdir / "w.npy", np.zeros((n, *out.sd_text.shape[1:]), np.float16))
    result.parts_ms = {k: v / n * 1000 for k, v in {**seconds_per_part, "write": write}.items()}
    for round_ in range(rounds + 1):
        for inputs in shards:
            bare = bare_rate(encoders, inputs)
            stage = {
                v: stage_rate(workdir, inputs, encoders, PrecomputeOptions(batch_size=BATCH, **kw))
                for v, kw in VARIANTS.items()
            }
            if round_ > 0:
                result.bare.append(bare)
                for variant, rate in stage.items():
                    result.stage[variant].append(rate)
    return result


def report(m: Measurement) -> None:
    best = max(m.bare)
    print(f"{m.name}\n  bare forward            {best:8.1f} samples/s best ({1000 / best:.2f} ms/sample)")
    for variant, rates in m.stage.items():
        ratios = [r / b for r, b in zip(rates, m.bare, strict=True)]
        print(
            f"  stage, {variant:16s} {max(rates):8.1f} samples/s best | ratio stage/bare: median of "
            f"{len(ratios)} pairs {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}), "
            f"best/best {max(rates) / best:.2f}"
        )
    print("  serial non-forward parts, ms/sample: " + ", ".join(f"{k} {v:.3f}" for k, v in m.parts_ms.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="images (shards of 64)")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds after a warm-up round")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gill-bench-precompute-") as tmp:
        root = Path(tmp)
        write_shards(root, args.images)
        print(
            f"{args.images} images (256 px JPEG), shards of {PER_SHARD}, batch {BATCH}, {torch.get_num_threads()} "
            f"torch threads, {args.rounds} rounds after a warm-up; load average {os.getloadavg()[0]:.2f} on "
            f"{os.cpu_count()} CPUs"
        )
        report(measure("tiny preset (vision 48 wide, 32 px; text 32 wide)", get_preset("tiny"), root, args.rounds))
        mid = mid_config(root / "zoo")
        report(measure("mid-size (vision 384 wide x 6, 128 px; text 384 wide x 6)", mid, root, args.rounds))
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
