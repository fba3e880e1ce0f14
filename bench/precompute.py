"""How close the precompute stage comes to its bound: its slower part, or both parts sharing the CPU.

Run: ``.venv/bin/python bench/precompute.py [--sizes tiny,mid] [--rounds 4] [--processes N] [--no-pin-cores]
[--per-round] [--device cpu|cuda] [--dtype fp32|fp16|bf16]``. For two model sizes, on the same images and captions,
it measures each part of the stage alone on the whole machine, then the stage in several layouts:

* **forward F**: only ``FrozenEncoders.encode`` (vision ``pooler_output`` + SD ``last_hidden_state``) over
  batches preprocessed beforehand. On a CPU, the faster of the two ways to give it every core: one process on
  torch's intra-op threads (``--threads``, the **bare encoders** of earlier versions of this bench) and one
  process per core at one thread each, running at once. On a GPU: one process.
* **prepare P**: read each member from the tar, decode the JPEG, run the image processor (batched:
  :class:`gill.data.precompute.BatchPreprocessor`, bit-identical), tokenise the captions: one process per core,
  each preparing whole shards serially, running at once.
* **stage**: :func:`gill.data.precompute.precompute_shard` end to end over every shard, into fresh folders (hash and
  index the tar, prepare, forward, write the ``.npy`` files, keys and manifest).

**Bound.** On a GPU the two parts use different hardware, so the stage can at best run at the slower one:
min(F, P). On a CPU they share the cores: each sample takes 1/F of the whole machine's time in the forward and 1/P
in preparing, so no layout beats 1/(1/F + 1/P), which is below min(F, P). **stage/bound** is the goal (>= 0.9);
**stage/bare encoders** is the ratio this bench reported before (the forward in one process on all threads).

Stage layouts: shards in ``--processes`` processes (default: one per core; CPU only), each with its own encoders,
forward on its share of the cores, batches prepared inline (``gill data precompute --processes N``); one process
with the default options (batches prepared in a background thread, forward threads balanced automatically); one
process with ``--processes`` worker processes preparing the batches (``--num-workers N``, the GPU layout); one
process preparing inline (``--prefetch 0``). Processes are started and load the encoders before the timing: that
start-up is paid once per run and printed apart. The processes of the multi-process parts and of ``--processes``
are pinned to their own cores, as the stage's are by default (``--no-pin-cores``: neither).

Parts and stages alternate round by round (round 0 warms up); each ratio is a same-round pair (median and range
over rounds; the CPU may be shared) and best/best. Sizes: the ``tiny`` preset (vision width 48 at 32 px: its
forward costs about what decoding a 256 px JPEG does) and a mid-size pair built on the fly (CLIP ViT width 384,
6 layers, 128 px, patch 16; CLIP text width 384, 6 layers) saved into a temp zoo (its forward dominates).
Images: synthetic CC3M JPEGs at 256 px in img2dataset webdataset shards. The serial cost of each preparation part
is printed too, with the image processor called image by image and batched.

Figures on a shared 2-core CPU are noisy (a round's figures move by 5-10% on a VM with neighbours, which is why
the default is 4 rounds): run it on a quiet machine and read the stage/bound median. Measured on a 2-core VM (AMD
EPYC, fp32, defaults, processes pinned): the median of 4 rounds per run, the range over 3 runs for tiny and 2 for
mid-size (the second mid-size run had a busy neighbour: its rounds ranged 0.84-1.20):

=======================================  ===========================  ===========================
stage layout                             tiny (bound 1,748-1,891/s)   mid-size (bound 44.8-47.4/s)
=======================================  ===========================  ===========================
``--processes 2``: 2 shard processes     0.91-0.94 (rounds 0.90-0.97)  0.91-1.03
default: 1 process, 1 preparing thread   0.67-0.70                    0.95-0.97
``--num-workers 2``                      0.65-0.69                    0.92-0.98
``--prefetch 0``: prepared inline        0.48-0.52                    0.95-0.96
=======================================  ===========================  ===========================

The tiny forward is best spread over one process per core (3,156-3,248/s against 2,219-2,330/s on two threads),
the mid-size one over two threads in one process (46-48/s against 39-42/s), so each size has its own best layout.
The tiny stage's remaining gap is the cost of mixing the two parts on shared cores: one process doing both
serially reaches 0.94-0.97 of 1/(1/F + 1/P) measured on one core (hashing, indexing and writing the shard add
about 4%), while each part alone loses nothing when two processes run it at once. Pinning each process to its own
core gained 1.5-3% in the same rounds; before it, with 2 rounds per run, the tiny median ranged 0.87-0.90.
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
from device import DeviceChoice, add_device_arguments, resolve_device

from gill.config import GILLConfig
from gill.data.precompute import (
    BatchPreprocessor,
    FrozenEncoders,
    PrecomputeOptions,
    ShardTask,
    decode_image,
    load_encoders,
    precompute_shard,
    prepared_batches,
    shard_processes,
    torch_threads,
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
from gill.utils.process_farm import ProcessFarm, cores

logger = logging.getLogger("bench.precompute")

SPLIT = "bench"
BATCH = 32
SIZES = {"tiny": (4096, 1024), "mid": (512, 128)}
"""Default images and shard size per model size: four shards, so that one process per core gets the same work, and
large enough for the per-shard costs (hashing and indexing the tar, fsync of the small files) to weigh about as
little as in a real 10,000-image shard."""
SIZE_NAMES = {
    "tiny": "tiny preset (vision 48 wide, 32 px; text 32 wide)",
    "mid": "mid-size (vision 384 wide x 6, 128 px; text 384 wide x 6)",
}


def split_folders(workdir: Path) -> SplitFolders:
    """The benchmark's image and feature folders."""
    return SplitFolders(name=SPLIT, images=workdir / "images", features=workdir / "features")


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
class Rates:
    """samples/s per measured round, by name (the parts and each stage layout)."""

    by_name: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, rate: float) -> None:
        self.by_name.setdefault(name, []).append(rate)


@dataclass(kw_only=True)
class Measurement:
    """One size's results."""

    name: str
    cuda: bool
    rates: Rates = field(default_factory=Rates)
    startup_s: dict[str, float] = field(default_factory=dict)
    """Seconds to start each farm of processes (paid once per run)."""
    parts_ms: dict[str, float] = field(default_factory=dict)
    """ms per sample of each preparation part and of writing, run serially."""

    def bound(self) -> list[float]:
        """Per round: min(F, P) on a GPU, 1/(1/F + 1/P) on a CPU."""
        forward, prepare = self.forward(), self.rates.by_name["prepare"]
        if self.cuda:
            return [min(f, p) for f, p in zip(forward, prepare, strict=True)]
        return [1 / (1 / f + 1 / p) for f, p in zip(forward, prepare, strict=True)]

    def forward(self) -> list[float]:
        """Per round: the faster way to run the forward on the whole machine."""
        ways = [self.rates.by_name[k] for k in ("forward threads", "forward processes") if k in self.rates.by_name]
        return [max(r) for r in zip(*ways, strict=True)]


def write_shards(workdir: Path, n_images: int, per_shard: int) -> None:
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
    return ShardInputs(tar=tar, pixels=pixels, ids=ids, count=len(samples))


def forward(encoders: FrozenEncoders, inputs: ShardInputs) -> int:
    """The two forwards over one shard's prepared batches; the sample count."""
    for pixels, ids in zip(inputs.pixels, inputs.ids, strict=True):
        encoders.encode(pixels, ids)
    return inputs.count


def prepare_inline(encoders: FrozenEncoders, tar: Path) -> int:
    """The stage's own input path over one shard, serially (read, decode, preprocess, tokenise); the sample count."""
    index = index_shard(tar)
    with prepared_batches(index, index.image_keys, encoders, PrecomputeOptions(batch_size=BATCH, prefetch=0)) as feed:
        return sum(len(batch.keys) for batch in feed)


# -- parts in one process per core (module-level: the processes import them) -------------------------------


@dataclass(frozen=True)
class PartState:
    encoders: FrozenEncoders
    inputs: list[ShardInputs]
    """Every shard's prepared inputs (forward processes only)."""


def _part_setup(config: GILLConfig, options: PrecomputeOptions, tars: list[Path], with_inputs: bool) -> PartState:
    encoders = load_encoders(config, options)
    return PartState(encoders=encoders, inputs=[prepare(t, encoders, {}) for t in tars] if with_inputs else [])


def _forward_work(state: PartState, shard: int, report: Callable[[int], None]) -> int:
    return forward(state.encoders, state.inputs[shard])


def _prepare_work(state: PartState, tar: Path, report: Callable[[int], None]) -> int:
    return prepare_inline(state.encoders, tar)


def timed_rate(farm: ProcessFarm, items: list) -> float:
    """samples/s of a farm over ``items`` (its work returns a sample count or a ShardResult)."""
    start = time.perf_counter()
    results = farm.map(items)
    seconds = time.perf_counter() - start
    return sum(r if isinstance(r, int) else r.count for r in results) / seconds


# -- one size -------------------------------------------------------------------------------------------------


def fresh_stage(workdir: Path) -> SplitFolders:
    """The split with its feature folder removed (every stage run computes every shard)."""
    split = split_folders(workdir)
    shutil.rmtree(split.features, ignore_errors=True)
    return split


def measure(
    name: str, config: GILLConfig, workdir: Path, rounds: int, choice: DeviceChoice, processes: int, pin: bool
) -> Measurement:
    """Parts and stage layouts, alternating round by round (round 0 warms up)."""
    base = {"batch_size": BATCH, "device": str(choice.device), "dtype": choice.dtype_name}
    options = PrecomputeOptions(**base)
    encoders = load_encoders(config, options)
    tars = complete_image_shards(split_folders(workdir).images)
    prepare(tars[0], encoders, {})  # warm-up: first calls of processor and tokenizer
    seconds_per_part: dict[str, float] = {}
    shards = [prepare(tar, encoders, seconds_per_part) for tar in tars]
    n = sum(s.count for s in shards)
    out = encoders.encode(shards[0].pixels[0], shards[0].ids[0])
    start = time.perf_counter()
    np.save(workdir / "w.npy", np.zeros((n, *out.sd_text.shape[1:]), np.float16))
    add_seconds(seconds_per_part, "write", start)
    result = Measurement(name=name, cuda=choice.is_cuda)
    result.parts_ms = {k: v / n * 1000 for k, v in seconds_per_part.items()}

    cpu = PrecomputeOptions(batch_size=BATCH)
    farms: dict[str, ProcessFarm] = {
        "prepare": ProcessFarm(processes, _part_setup, (config, cpu, tars, False), _prepare_work, pin=pin),
    }
    layouts: dict[str, PrecomputeOptions] = {}
    if not choice.is_cuda:
        farms["forward processes"] = ProcessFarm(
            processes, _part_setup, (config, cpu, tars, True), _forward_work, pin=pin
        )
        farms["stage"] = shard_processes(config, PrecomputeOptions(**base, processes=processes, pin_cores=pin))
        layouts[f"--processes {processes}: {processes} shard processes"] = options  # run by its farm
    layouts["default: 1 process, 1 preparing thread"] = options
    layouts[f"--num-workers {processes}: 1 process, {processes} preparing processes"] = PrecomputeOptions(
        **base, num_workers=processes
    )
    layouts["--prefetch 0: 1 process, prepared inline"] = PrecomputeOptions(**base, prefetch=0)
    try:
        for farm in farms.values():  # all set up at once
            farm.start()
        for key, farm in farms.items():
            farm.wait_ready()
            result.startup_s[key] = farm.startup_s
        for round_ in range(rounds + 1):
            measured = one_round(encoders, shards, farms, layouts, workdir, choice)
            logger.info(
                "round %d%s: %s",
                round_,
                " (warm-up)" if round_ == 0 else "",
                ", ".join(f"{k.split(':')[0]} {v[0]:.0f}" for k, v in measured.by_name.items()),
            )
            if round_ > 0:
                for key, values in measured.by_name.items():
                    result.rates.add(key, values[0])
    finally:
        for farm in farms.values():
            farm.close()
    return result


def one_round(
    encoders: FrozenEncoders,
    shards: list[ShardInputs],
    farms: dict[str, ProcessFarm],
    layouts: dict[str, PrecomputeOptions],
    workdir: Path,
    choice: DeviceChoice,
) -> Rates:
    """Each part, then each stage layout, once over every shard."""
    measured, tars = Rates(), [s.tar for s in shards]
    with torch_threads(torch.get_num_threads()):
        choice.synchronize()
        start = time.perf_counter()
        count = sum(forward(encoders, s) for s in shards)
        choice.synchronize()
        measured.add("forward threads", count / (time.perf_counter() - start))
    if "forward processes" in farms:
        measured.add("forward processes", timed_rate(farms["forward processes"], list(range(len(shards)))))
    measured.add("prepare", timed_rate(farms["prepare"], tars))
    for label, layout in layouts.items():
        split = fresh_stage(workdir)
        if label.endswith("shard processes"):
            measured.add(label, timed_rate(farms["stage"], [ShardTask(t, split) for t in tars]))
            continue
        start = time.perf_counter()
        count = sum(precompute_shard(t, split, encoders, layout).count for t in tars)
        measured.add(label, count / (time.perf_counter() - start))
    return measured


def ratio_text(nums: list[float], dens: list[float]) -> str:
    ratios = [a / b for a, b in zip(nums, dens, strict=True)]
    return f"{max(nums) / max(dens):.2f}, {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def report(m: Measurement, processes: int) -> None:
    """One table per size: each part's and layout's best samples/s over the rounds (the machine may be shared: load
    only slows a round down), stage/bound and stage/bare encoders as best/best and median (range) of same-round
    pairs."""
    rates = m.rates.by_name
    print(m.name)
    start_up = ", ".join(f"{k} {v:.1f} s" for k, v in m.startup_s.items())
    print(
        "  parts alone on the whole machine, samples/s (best of rounds; process start-up, all farms at once, paid "
        f"once: {start_up}):"
    )
    threads = torch.get_num_threads()
    print(f"    forward, 1 process x {threads} threads (bare encoders): {max(rates['forward threads']):.1f}")
    if "forward processes" in rates:
        print(f"    forward, {processes} processes x 1 thread: {max(rates['forward processes']):.1f}")
    print(f"    prepare, {processes} processes: {max(rates['prepare']):.1f}")
    formula = (
        "min(F, P) (GPU: the parts use different hardware)" if m.cuda else "1/(1/F + 1/P) (the parts share the cores)"
    )
    bound = m.bound()
    print(f"  bound {formula}: {max(bound):.1f}")
    print(f"  {'stage layout':52s} {'samples/s':>9s}  stage/bound: best/best, median (range) | stage/bare encoders")
    for label, values in rates.items():
        if label in ("forward threads", "forward processes", "prepare"):
            continue
        print(
            f"  {label:52s} {max(values):9.1f}  {ratio_text(values, bound)} | "
            f"{ratio_text(values, rates['forward threads'])}"
        )
    print("  serial parts, ms/sample: " + ", ".join(f"{k} {v:.3f}" for k, v in m.parts_ms.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="images per size (default: tiny 4096, mid 512)")
    parser.add_argument("--per-shard", type=int, help="images per shard (default: tiny 1024, mid 128)")
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds after a warm-up round")
    parser.add_argument("--per-round", action="store_true", help="print each round's samples/s as it ends")
    parser.add_argument("--threads", type=int, default=cores(), help="torch intra-op threads of this process")
    parser.add_argument("--processes", type=int, default=cores(), help="processes of the multi-process parts")
    parser.add_argument(
        "--pin-cores",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin each process of the multi-process parts and of --processes to its own cores (as the stage does "
        "by default)",
    )
    parser.add_argument("--sizes", default="tiny,mid", help="comma-separated sizes to measure: tiny, mid")
    add_device_arguments(parser)
    args = parser.parse_args()
    choice = resolve_device(args)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO if args.per_round else logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sizes = [s for s in args.sizes.split(",") if s]
    if unknown := sorted(set(sizes) - set(SIZES)):
        parser.error(f"--sizes: unknown size {', '.join(unknown)} (use tiny, mid)")
    compute = "fp32 (the stage computes fp32 on the CPU)" if not choice.is_cuda else f"autocast {choice.dtype_name}"
    print(
        f"256 px JPEGs, batch {BATCH}, {args.rounds} rounds after a warm-up; {choice.describe()}, compute {compute}; "
        f"{cores()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="gill-bench-precompute-") as tmp:
        root = Path(tmp)
        for size in sizes:
            images, per_shard = args.images or SIZES[size][0], args.per_shard or SIZES[size][1]
            write_shards(root / size, images, per_shard)
            config = get_preset("tiny") if size == "tiny" else mid_config(root / "zoo")
            name = f"{SIZE_NAMES[size]}, {images} images in shards of {per_shard}"
            measured = measure(name, config, root / size, args.rounds, choice, args.processes, args.pin_cores)
            report(measured, args.processes)
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
