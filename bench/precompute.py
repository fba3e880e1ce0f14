"""How close the precompute stage comes to its slowest part: the frozen forward, or preparing its inputs.

Run: ``.venv/bin/python bench/precompute.py [--images 128] [--rounds 2] [--threads 2] [--device cpu] [--dtype fp32]``.
For two model sizes, on the same images and captions, it measures each part of the stage alone and the stage:

* **forward**: only ``FrozenEncoders.encode`` (vision ``pooler_output`` + SD ``last_hidden_state``) over one
  shard's batches, preprocessed beforehand, with the torch threads the variant gives the forward (the bare
  encoders of the earlier version of this bench: ``--threads``, torch's setting, unless a variant sets
  ``forward_threads``);
* **prepare**: the stage's own input path, ``prepared_batches`` drained without a forward: read each member from
  the tar, decode the JPEG, run the image processor, tokenise the captions, with the parallelism the variant
  gives it (inline, ``threads`` background threads, or ``num_workers`` processes, their start-up included);
* **stage**: :func:`gill.data.precompute.precompute_shard` end to end into a fresh folder (hash and index the
  tar, prepare, forward, write ``.npy`` files and manifest).

**Bound** = min(forward, prepare) of a variant: the rate of a perfect pipeline whose two parts each keep the
resources the variant gives them, with nothing lost to handing batches over, to hashing or to writing. On a
GPU the forward and the preparation use different hardware, so the bound is the plain min of the two. On a
CPU-only machine they share the cores: the bound is only reachable when the variant's threads fit the cores
(forward threads + preparing threads <= cores), which is why the ``forward 1 thread`` variant exists on 2 cores.
Printed per variant: both parts' samples/s, the bound, the stage, **stage/bound** (goal >= 0.9) and stage/bare
encoders (the forward at the default threads: the ratio this bench reported before). Parts and stage alternate
shard by shard, so each ratio is a same-shard pair (median and range over pairs; the CPU may be shared).

Sizes: the ``tiny`` preset (vision width 48 at 32 px: its forward is cheaper than decoding a 256 px JPEG, so
preparation bounds it) and a mid-size pair built on the fly (CLIP ViT width 384, 6 layers, 128 px, patch 16;
CLIP text width 384, 6 layers) saved into a temp zoo (its forward bounds it). Images: synthetic CC3M JPEGs at
256 px in img2dataset webdataset shards of 64. The serial cost of each preparation part is printed too, with the
image processor called image by image and batched (:class:`gill.data.precompute.BatchPreprocessor`, whose
output is bit-identical).

Figures on a shared 2-core CPU are noisy: run it on a quiet machine and read the stage/bound column.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from device import DeviceChoice, add_device_arguments, resolve_device

from gill.config import GILLConfig
from gill.data.precompute import (
    BatchPreprocessor,
    FrozenEncoders,
    PrecomputeOptions,
    decode_image,
    load_encoders,
    precompute_shard,
    prepared_batches,
    read_feature_manifest,
    torch_threads,
)
from gill.data.shards import (
    ShardIndex,
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
PER_SHARD = 64
BATCH = 32
ALL_THREADS = -1
"""Placeholder in VARIANTS for ``--threads`` (every torch thread for the forward, no automatic lowering)."""
VARIANTS = {
    "inline": ("no overlap", {"prefetch": 0}),
    "default": ("1 thread (default)", {}),
    "full": ("1 thread, forward all threads", {"forward_threads": ALL_THREADS}),
    "split": ("1 thread, forward 1 thread", {"forward_threads": 1}),
    "threads": ("2 threads", {"threads": 2}),
    "workers": ("2 workers", {"num_workers": 2}),
    "unbatched": ("image by image", {"batched_preprocess": False}),
}
"""Stage variants (name: label, PrecomputeOptions fields over the defaults): inputs prepared inline; in the default
background thread, the forward's threads automatic; the same with the forward held to all torch threads (the
stage before the automatic balance) or to one (the cores split between the parts); in 2 threads; in 2 worker
processes (the setting for a GPU machine; on small shards their start-up dominates); the default with the image
processor called image by image."""


def split_folders(workdir: Path) -> SplitFolders:
    """The benchmark's image and feature folders."""
    return SplitFolders(name=SPLIT, images=workdir / "images", features=workdir / "features")


@dataclass(kw_only=True)
class ShardInputs:
    """One shard's encoder inputs, prepared before timing the bare forward."""

    tar: Path
    index: ShardIndex
    pixels: list[torch.Tensor]
    """Per batch: (B, 3, H, W)."""
    ids: list[torch.Tensor]
    """Per batch: (B, 77)."""
    count: int


@dataclass(kw_only=True)
class VariantRates:
    """samples/s of one variant's parts and stage, one entry per shard and round (same index: same pass)."""

    forward: list[float] = field(default_factory=list)
    prepare: list[float] = field(default_factory=list)
    stage: list[float] = field(default_factory=list)

    @property
    def bound(self) -> list[float]:
        return [min(f, p) for f, p in zip(self.forward, self.prepare, strict=True)]


@dataclass(kw_only=True)
class Measurement:
    """One size's results."""

    name: str
    bare: list[float] = field(default_factory=list)
    """samples/s of the forward at the default threads, per shard and round (paired with each variant's stage)."""
    variants: dict[str, VariantRates] = field(default_factory=dict)
    parts_ms: dict[str, float] = field(default_factory=dict)
    """ms per sample of each preparation part and of writing, run serially."""


def write_shards(workdir: Path, n_images: int, per_shard: int = PER_SHARD) -> None:
    """The synthetic world's CC3M pairs as img2dataset shards of ``per_shard`` samples."""
    config = SynthConfig(seed=1, n_train=n_images, n_val=1, n_stories=1, n_dialogs=1, image_size=256)
    world = synthesize_world(workdir / "world", config, progress=False)
    rows = [line.split("\t") for line in world.cc3m_train_tsv.read_text(encoding="utf-8").splitlines()]
    samples = [
        ShardSample(
            key=f"{i // per_shard:05d}{i % per_shard:04d}",
            caption=caption,
            meta={},
            jpeg=Path(unquote(urlparse(url).path)).read_bytes(),
        )
        for i, (caption, url) in enumerate(rows)
    ]
    for start in range(0, n_images, per_shard):
        tar = split_folders(workdir).images / f"{start // per_shard:05d}.tar"
        write_image_shard(tar, samples[start : start + per_shard])


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


def variant_fields(name: str) -> dict[str, object]:
    """A variant's PrecomputeOptions fields, with ALL_THREADS replaced by torch's thread count."""
    fields = dict(VARIANTS[name][1])
    if fields.get("forward_threads") == ALL_THREADS:
        fields["forward_threads"] = torch.get_num_threads()
    return fields


def add_seconds(parts: dict[str, float], name: str, start: float) -> None:
    parts[name] = parts.get(name, 0.0) + time.perf_counter() - start


def prepare(tar: Path, encoders: FrozenEncoders, parts: dict[str, float]) -> ShardInputs:
    """Read, decode, preprocess and tokenise one shard serially, adding each part's seconds to ``parts``."""
    start = time.perf_counter()
    index = index_shard(tar)
    samples = read_samples(index, index.image_keys)
    add_seconds(parts, "read tar", start)
    start = time.perf_counter()
    images = [decode_image(s, tar.name) for s in samples]
    add_seconds(parts, "decode", start)
    chunks = [slice(i, i + BATCH) for i in range(0, len(samples), BATCH)]
    start = time.perf_counter()
    [BatchPreprocessor(encoders.image_processor)(images[c]) for c in chunks]
    add_seconds(parts, "preprocess image by image", start)
    start = time.perf_counter()
    pixels = [encoders.preprocess(images[c]) for c in chunks]  # each (B, 3, H, W)
    add_seconds(parts, "preprocess batched" if encoders.pixels.batched else "preprocess (not batchable)", start)
    start = time.perf_counter()
    ids = [encoders.tokenize([s.caption for s in samples[c]]) for c in chunks]  # each (B, 77)
    add_seconds(parts, "tokenise", start)
    return ShardInputs(tar=tar, index=index, pixels=pixels, ids=ids, count=len(samples))


def forward_rate(encoders: FrozenEncoders, inputs: ShardInputs, threads: int, choice: DeviceChoice) -> float:
    """samples/s of the two forwards alone over one shard's prepared batches, with ``threads`` torch threads."""
    with torch_threads(threads):
        choice.synchronize()
        start = time.perf_counter()
        for pixels, ids in zip(inputs.pixels, inputs.ids, strict=True):
            encoders.encode(pixels, ids)
        choice.synchronize()
        return inputs.count / (time.perf_counter() - start)


def prepare_rate(encoders: FrozenEncoders, inputs: ShardInputs, options: PrecomputeOptions) -> float:
    """samples/s of the stage's input path alone (read, decode, preprocess, tokenise with its parallelism)."""
    start = time.perf_counter()
    count = sum(len(batch.keys) for batch in prepared_batches(inputs.index, inputs.index.image_keys, encoders, options))
    return count / (time.perf_counter() - start)


@dataclass(frozen=True)
class StagePass:
    """One precompute_shard run."""

    rate: float
    """samples/s."""
    forward_threads: int
    """torch threads the forward ran on (from the manifest: after the automatic balance, if any)."""


def stage_rate(workdir: Path, inputs: ShardInputs, encoders: FrozenEncoders, options: PrecomputeOptions) -> StagePass:
    """samples/s of precompute_shard on one shard, into a fresh feature folder."""
    shutil.rmtree(split_folders(workdir).features / inputs.tar.stem, ignore_errors=True)
    start = time.perf_counter()
    count = precompute_shard(inputs.tar, split_folders(workdir), encoders, options).count
    rate = count / (time.perf_counter() - start)
    manifest = read_feature_manifest(split_folders(workdir).features / inputs.tar.stem)
    return StagePass(rate=rate, forward_threads=manifest["forward_threads"])


def measure(
    name: str, config: GILLConfig, workdir: Path, rounds: int, choice: DeviceChoice, variants: list[str]
) -> Measurement:
    """Stage, forward and preparation alternate shard by shard (so each pass's parts and stage see the same machine
    load); the forward is measured with the threads the stage's forward ran on. Round 0 warms up."""
    base = {"batch_size": BATCH, "device": str(choice.device), "dtype": choice.dtype_name}
    encoders = load_encoders(config, PrecomputeOptions(**base))
    options = {VARIANTS[v][0]: PrecomputeOptions(**base, **variant_fields(v)) for v in variants}
    result = Measurement(name=name, variants={label: VariantRates() for label in options})
    tars = complete_image_shards(split_folders(workdir).images)
    prepare(tars[0], encoders, {})  # warm-up: first calls of processor and tokenizer
    seconds_per_part: dict[str, float] = {}
    shards = [prepare(tar, encoders, seconds_per_part) for tar in tars]
    n = sum(s.count for s in shards)
    out = encoders.encode(shards[0].pixels[0], shards[0].ids[0])
    start = time.perf_counter()
    np.save(workdir / "w.npy", np.zeros((n, *out.sd_text.shape[1:]), np.float16))
    add_seconds(seconds_per_part, "write", start)
    result.parts_ms = {k: v / n * 1000 for k, v in seconds_per_part.items()}
    default_threads = torch.get_num_threads()
    for round_ in range(rounds + 1):
        for inputs in shards:
            forward = {default_threads: forward_rate(encoders, inputs, default_threads, choice)}
            passes = {}
            for variant, o in options.items():
                stage = stage_rate(workdir, inputs, encoders, o)
                if stage.forward_threads not in forward:
                    forward[stage.forward_threads] = forward_rate(encoders, inputs, stage.forward_threads, choice)
                passes[variant] = (forward[stage.forward_threads], prepare_rate(encoders, inputs, o), stage.rate)
            if round_ > 0:
                result.bare.append(forward[default_threads])
                for variant, (f, p, s) in passes.items():
                    rates = result.variants[variant]
                    rates.forward.append(f)
                    rates.prepare.append(p)
                    rates.stage.append(s)
    return result


def ratio_text(nums: list[float], dens: list[float]) -> str:
    ratios = [a / b for a, b in zip(nums, dens, strict=True)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def report(m: Measurement) -> None:
    """One table per size: the best samples/s of each part and of the stage over the passes (the machine may be
    shared: load only slows a pass down), stage/bound as best/best and as the median (range) of same-pass pairs."""
    print(f"{m.name}: bare encoders (forward, default threads) {max(m.bare):.1f} samples/s best")
    print(
        f"  {'variant':30s} {'forward':>8s} {'prepare':>8s} {'bound':>8s} {'stage':>8s}  stage/bound: best/best, "
        "median of pairs (range) | stage/bare encoders"
    )
    for variant, r in m.variants.items():
        print(
            f"  {variant:30s} {max(r.forward):8.1f} {max(r.prepare):8.1f} {max(r.bound):8.1f} {max(r.stage):8.1f}  "
            f"{max(r.stage) / max(r.bound):.2f}, {ratio_text(r.stage, r.bound)} | "
            f"{max(r.stage) / max(m.bare):.2f}, {ratio_text(r.stage, m.bare)}"
        )
    print("  serial parts, ms/sample: " + ", ".join(f"{k} {v:.3f}" for k, v in m.parts_ms.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="images in all")
    parser.add_argument("--per-shard", type=int, default=PER_SHARD, help="images per shard")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds after a warm-up round")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the forward's default)")
    parser.add_argument("--sizes", default="tiny,mid", help="comma-separated sizes to measure: tiny, mid")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated stage variants: {', '.join(VARIANTS)}"
    )
    add_device_arguments(parser)
    args = parser.parse_args()
    choice = resolve_device(args)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sizes = set(args.sizes.split(","))
    variants = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS] + sorted(sizes - {"tiny", "mid"}):
        parser.error(f"unknown variant or size: {', '.join(unknown)}")
    if "default" not in variants:
        variants.insert(0, "default")  # the bare-encoder ratio is taken at the default threads
    with tempfile.TemporaryDirectory(prefix="gill-bench-precompute-") as tmp:
        root = Path(tmp)
        write_shards(root, args.images, args.per_shard)
        compute = "fp32 (the stage computes fp32 on the CPU)" if not choice.is_cuda else f"autocast {choice.dtype_name}"
        print(
            f"{args.images} images (256 px JPEG), shards of {args.per_shard}, batch {BATCH}, {torch.get_num_threads()} "
            f"torch threads, {args.rounds} rounds after a warm-up; {choice.describe()}, compute {compute}; load "
            f"average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; samples/s (median over passes)"
        )
        if "tiny" in sizes:
            name = "tiny preset (vision 48 wide, 32 px; text 32 wide)"
            report(measure(name, get_preset("tiny"), root, args.rounds, choice, variants))
        if "mid" in sizes:
            mid = mid_config(root / "zoo")
            name = "mid-size (vision 384 wide x 6, 128 px; text 384 wide x 6)"
            report(measure(name, mid, root, args.rounds, choice, variants))
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
