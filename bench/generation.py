"""Throughput of the benchmarks' batched image generation against a bare batched ``StableDiffusionPipeline`` call.

Run from the repo root: ``python bench/generation.py [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--batch-size 8]
[--steps 4] [--rounds 3] [--sizes tiny,mid] [--threads N]``.

What it measures, per model size and per path, on the same inputs, the same steps and the same batch size:

* ``gill-gen``: ours is :meth:`eval.bench_systems.SystemRunner.generate_gill`, the call ``run_generation`` makes for
  the GILL generations of a batch (GILLMapper on the ``[IMG]`` states, the cached negative embedding, one seeded CPU
  generator per image, SD, the decode to PIL, the safety flags); bare is ``pipe.sd(prompt_embeds=...,
  negative_prompt_embeds=..., generator=[...], output_type="pil")`` on the mapper output computed beforehand.
* ``sd``: ours is :meth:`~eval.bench_systems.SystemRunner.generate_sd`, the call for the ``sd`` baseline's texts of a
  batch; bare is ``pipe.sd(prompt=texts, generator=[...], output_type="pil")``.

Each round times bare and ours back to back (their order alternating between rounds) and ours at batch 1. It
prints images/s of both, the ratio ours/bare (median over rounds, with its range; the goal is >= 0.9 at batch 8),
how much faster ours is per image at the batch size than at batch 1, and the share of ours spent outside the SD call
(mapper, generators, flags: timed by wrapping ``StableDiffusionPipeline.__call__``), which is the ratio's cause
when timings are noisy.

Sizes: ``tiny`` is the tiny preset's models (``gill.presets.get_preset("tiny")`` through ``gill.factory``: the world
SD, a 2.3 M-parameter UNet at 16x16 latents, 64x64 images) with random adapters; ``mid`` swaps its UNet for a
randomly initialised ``UNet2DConditionModel`` (26 M parameters: block_out_channels (128, 256, 256), one layer per
block, cross-attention at the two lower resolutions to the tiny text encoder's width 32, 32x32 latents, 128x128
images through the tiny VAE), about 0.36 s per image and denoising step (with its guidance pair) on one CPU thread.

Measured on this machine (``--steps 4 --rounds 7 --threads 1``: 2 CPU cores shared with other work, so one thread
keeps the timings steadier; fp32, batch 8)::

    size  path      bare img/s ours img/s   ratio [range]          ours@1 img/s  speed-up  not in SD
    tiny  gill-gen        7.20       6.93   0.963 [0.790, 1.210]         2.56     2.71x       2.0%
    tiny  sd              7.85       9.27   1.166 [0.953, 1.226]         3.49     2.66x       0.0%
    mid   gill-gen        0.44       0.44   0.978 [0.846, 1.046]         0.43     1.03x       0.1%
    mid   sd              0.63       0.63   0.987 [0.931, 1.103]         0.60     1.04x       0.0%

Ours runs at the bare call's speed (median ratios 0.96-1.17; outside the SD call it spends 2% on the tiny models,
mostly the GILLMapper, and 0.1% on the mid-size UNet). Batching pays 2.7x per image on the tiny models, where a
batch-1 call is overhead-bound, and nothing on the CPU for the compute-bound mid-size UNet; the gain it is meant for
is on a GPU, which this machine does not have.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from device import DeviceChoice, add_device_arguments, resolve_device
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from eval.bench_systems import ImageOptions, SystemRunner
from gill.factory import derive_dims, load_backbones
from gill.model import GILLModel
from gill.pipeline import GenerationSettings, GILLPipeline
from gill.presets import get_preset
from gill.tokenization import add_img_tokens

CAPTIONS = (
    "a red circle at the top left of a grey background",
    "two blue squares in the middle",
    "a small yellow star on the right",
    "a green triangle and a purple circle",
    "a large orange square at the bottom",
    "three small shapes on a white background",
    "a pink star above a cyan circle",
    "a black triangle at the bottom right",
)


@dataclass(frozen=True, kw_only=True)
class Timing:
    """Seconds per call of each variant, one entry per round."""

    bare: list[float]
    ours: list[float]
    ours_one: list[float]
    ours_outside_sd: list[float]
    """Seconds of each ``ours`` call spent outside the Stable Diffusion call (mapper, generators, flags...)."""


def build_pipeline(size: str, choice: DeviceChoice) -> GILLPipeline:
    """The tiny preset's GILL pipeline with random adapters; ``mid`` swaps in the mid-size UNet."""
    config = get_preset("tiny")
    backbones = load_backbones(config, roles=("lm", "vision", "sd"))
    img = add_img_tokens(backbones.tokenizer, config.adapters.num_img_tokens)
    torch.manual_seed(0)
    model = GILLModel(config, derive_dims(config), backbones.lm, img.ids)
    sd = backbones.sd
    if size == "mid":
        sd = StableDiffusionPipeline(
            vae=sd.vae,
            text_encoder=sd.text_encoder,
            tokenizer=sd.tokenizer,
            unet=mid_unet(sd.text_encoder.config.hidden_size),
            scheduler=sd.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        sd.set_progress_bar_config(disable=True)
    sd.to(choice.device, choice.dtype)
    model.to(choice.device, choice.dtype)
    vision = backbones.vision.to(choice.device, choice.dtype)
    return GILLPipeline(model, backbones.tokenizer, vision, backbones.image_processor, sd=sd, device=choice.device)


def mid_unet(cross_attention_dim: int) -> UNet2DConditionModel:
    """A randomly initialised mid-size UNet (see the module docstring)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(128, 256, 256),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    ).eval()


def img_states(pipe: GILLPipeline, n: int) -> list[torch.Tensor]:
    """GILL's forced ``[IMG]`` states of ``n`` captions, as the benchmark decodes them."""
    settings = GenerationSettings(force_image=True, max_new_tokens=1)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    return [pipe.generate_text(pipe.encode_prompt([c]), settings).img_states[0] for c in captions]


def timed(fn: Callable[[], object], choice: DeviceChoice) -> float:
    choice.synchronize()
    start = time.perf_counter()
    fn()
    choice.synchronize()
    return time.perf_counter() - start


class SDCallClock:
    """Adds up the wall time spent inside ``StableDiffusionPipeline.__call__`` while it is entered (to split ours into
    the SD call and the rest); the class's ``__call__`` is restored on exit."""

    def __init__(self, pipeline_class: type, choice: DeviceChoice) -> None:
        self.seconds = 0.0
        self.pipeline_class = pipeline_class
        self.original = pipeline_class.__call__
        self.choice = choice

    def __enter__(self) -> SDCallClock:
        clock, choice = self, self.choice

        def timed_call(sd: Any, *args: Any, **kwargs: Any) -> Any:
            choice.synchronize()
            start = time.perf_counter()
            try:
                return clock.original(sd, *args, **kwargs)
            finally:
                choice.synchronize()
                clock.seconds += time.perf_counter() - start

        self.pipeline_class.__call__ = timed_call
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipeline_class.__call__ = self.original


def measure(variants: dict[str, Callable[[], object]], rounds: int, choice: DeviceChoice, clock: SDCallClock) -> Timing:
    """Each variant once to warm up, then ``rounds`` rounds of bare and ours (alternating order) and ours at 1."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in (*variants, "ours_outside_sd")}
    for r in range(rounds):
        order = ["bare", "ours"] if r % 2 == 0 else ["ours", "bare"]
        for name in [*order, "ours_one"]:
            inside = clock.seconds
            times[name].append(timed(variants[name], choice))
            if name == "ours":
                times["ours_outside_sd"].append(times[name][-1] - (clock.seconds - inside))
    return Timing(**times)


def gill_variants(pipe: GILLPipeline, runner: SystemRunner, batch: int, steps: int) -> dict[str, Callable[[], object]]:
    states = img_states(pipe, batch)
    seeds = list(range(1000, 1000 + batch))
    with torch.no_grad():
        cond = pipe.model.generation_embeddings(torch.stack(states).to(pipe._adapter_dtype))
        negative = pipe.negative_embeds()
        cond = F.pad(cond, (0, 0, 0, max(0, negative.shape[1] - cond.shape[1])))
        negative = negative.expand(batch, -1, -1).contiguous()

    def bare() -> object:
        return pipe.sd(
            prompt_embeds=cond,
            negative_prompt_embeds=negative,
            guidance_scale=7.5,
            num_inference_steps=steps,
            output_type="pil",
            generator=[torch.Generator(device="cpu").manual_seed(s) for s in seeds],
        ).images

    return {
        "bare": bare,
        "ours": lambda: runner.generate_gill(states, seeds),
        "ours_one": lambda: runner.generate_gill(states[:1], seeds[:1]),
    }


def sd_variants(pipe: GILLPipeline, runner: SystemRunner, batch: int, steps: int) -> dict[str, Callable[[], object]]:
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    seeds = list(range(1000, 1000 + batch))

    def bare() -> object:
        return pipe.sd(
            prompt=texts,
            guidance_scale=7.5,
            num_inference_steps=steps,
            output_type="pil",
            generator=[torch.Generator(device="cpu").manual_seed(s) for s in seeds],
        ).images

    return {
        "bare": bare,
        "ours": lambda: runner.generate_sd(texts, seeds),
        "ours_one": lambda: runner.generate_sd(texts[:1], seeds[:1]),
    }


def report(size: str, path: str, timing: Timing, batch: int) -> str:
    bare_ips = batch / statistics.median(timing.bare)
    ours_ips = batch / statistics.median(timing.ours)
    ratios = [b / o for b, o in zip(timing.bare, timing.ours, strict=True)]
    one_ips = 1 / statistics.median(timing.ours_one)
    outside = statistics.median(timing.ours_outside_sd) / statistics.median(timing.ours)
    return (
        f"{size:5s} {path:9s} {bare_ips:10.2f} {ours_ips:10.2f} {statistics.median(ratios):7.3f} "
        f"[{min(ratios):.3f}, {max(ratios):.3f}] {one_ips:12.2f} {ours_ips / one_ips:8.2f}x {100 * outside:9.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="images per SD call (default 8)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (default 3)")
    parser.add_argument("--sizes", default="tiny,mid", help="comma-separated: tiny, mid (default both)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    choice = resolve_device(args)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in ("tiny", "mid")]
    if unknown or min(args.batch_size, args.steps, args.rounds, args.threads or 1) < 1:
        parser.error(f"--sizes takes tiny and mid (got {unknown}); --batch-size, --steps, --rounds, --threads: >= 1")
    print(
        f"generation throughput on {choice.describe()}, batch {args.batch_size}, {args.steps} steps, "
        f"{args.rounds} rounds (torch threads: {torch.get_num_threads()})"
    )
    print(
        f"{'size':5s} {'path':9s} {'bare img/s':>10s} {'ours img/s':>10s} {'ratio':>7s} {'[range]':16s} "
        f"{'ours@1 img/s':>12s} {'speed-up':>9s} {'not in SD':>10s}"
    )
    for size in sizes:
        pipe = build_pipeline(size, choice)
        runner = SystemRunner(pipe, clip=None, options=ImageOptions(sd_steps=args.steps))  # type: ignore[arg-type]
        with SDCallClock(type(pipe.sd), choice) as clock:
            for path, make in (("gill-gen", gill_variants), ("sd", sd_variants)):
                timing = measure(make(pipe, runner, args.batch_size, args.steps), args.rounds, choice, clock)
                print(report(size, path, timing, args.batch_size), flush=True)


if __name__ == "__main__":
    main()
