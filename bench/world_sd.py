"""Quality (and, with --rebuild, build time) of the world-trained Stable Diffusion of the tiny zoo.

Run: ``.venv/bin/python bench/world_sd.py [--sd DIR] [--n 200] [--steps 20] [--rebuild --out DIR]``.

Generates one image per held-out caption (scenes of the fixed held-out share that the build never rendered:
:func:`gill.zoo.world_sd.is_held_out`) and reads it back with the answer-key scene metric
(:mod:`eval.scene_metric`). Prints, per caption kind (one shape; the world's 1-3 shape mix) and for the real
renders of the same scenes as the ceiling and smooth colour noise as the floor: the share of images with the right
background, and of described shapes with the right colour, 3x3 cell, colour and cell together, size and kind.
Also prints seconds per image (DPM-Solver++, batch 16, 2 threads) against the same scenes' render time.

``--rebuild`` first trains a new world SD from scratch (``gill models build-world-sd``; tens of minutes) into
``--out`` and measures that one, printing the wall time of each build stage (on the CPU whatever ``--device``).

``--device``/``--dtype`` put the pipeline there in that type (``pipe.to(device, dtype)``; the noise generators stay
on the CPU, so an image does not depend on the device's random stream). Images come back as PIL images, so each
timing includes the device's work. The scene metric reads them on the CPU. On CUDA the peak GPU memory is printed.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from device import add_device_arguments, resolve_device
from diffusers import StableDiffusionPipeline

from eval.scene_metric import score_image, smooth_noise
from gill.synth.render import render_scene
from gill.synth.text import cc3m_caption
from gill.zoo.world_sd import generate, sample_held_out_scenes, shipped_paths

ATTRIBUTES = (
    "scene_background_ok",
    "scene_color_ok",
    "scene_cell_ok",
    "scene_color_cell_ok",
    "scene_size_ok",
    "scene_kind_ok",
    "scene_all_ok",
)


def accuracy(images, scenes) -> dict[str, float]:
    """Mean of each scene-metric column over the images."""
    columns = [score_image(image, scene).columns() for image, scene in zip(images, scenes, strict=True)]
    return {name: float(np.mean([c[name] for c in columns])) for name in ATTRIBUTES}


def row(label: str, values: dict[str, float], seconds: float | None = None) -> str:
    cells = " ".join(f"{values[a]:6.3f}" for a in ATTRIBUTES)
    return f"{label:28s} {cells}" + (f"   {seconds * 1000:7.1f} ms/img" if seconds is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd", type=Path, help="a world SD folder (default: the shipped one)")
    parser.add_argument("--n", type=int, default=200, help="held-out captions per kind")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--rebuild", action="store_true", help="train a new world SD first (slow)")
    parser.add_argument("--out", type=Path, default=Path("work/world-sd-rebuild"), help="where --rebuild writes")
    add_device_arguments(parser)
    args = parser.parse_args()
    dev = resolve_device(args)
    torch.set_num_threads(2)
    folder = args.sd or shipped_paths()[0]
    if args.rebuild:
        from gill.zoo.tiny import build_world_sd

        start = time.perf_counter()
        folder, report = build_world_sd(out=args.out, progress=lambda line: None)
        print(f"rebuild: {(time.perf_counter() - start) / 60:.1f} min in all; stages (s): {report.seconds}")
    pipe = StableDiffusionPipeline.from_pretrained(folder).to(dev.device, dev.dtype)
    pipe.set_progress_bar_config(disable=True)
    dev.reset_peak_memory()
    print(
        f"world SD {folder} on {dev.describe()}, {args.steps} steps, guidance {args.guidance}, {args.n} held-out "
        "captions per kind"
    )
    print(f"{'':28s} " + " ".join(f"{a.removeprefix('scene_').removesuffix('_ok')[:6]:>6s}" for a in ATTRIBUTES))
    for kind, n_shapes in (("one shape", 1), ("world mix (1-3 shapes)", None)):
        scenes = sample_held_out_scenes(args.n, seed=11, n_shapes=n_shapes)
        rng = random.Random(11)
        captions = [cc3m_caption(s, rng) for s in scenes]
        start = time.perf_counter()
        renders = [render_scene(s, 64) for s in scenes]
        render_s = (time.perf_counter() - start) / len(scenes)
        start = time.perf_counter()
        images = generate(pipe, captions, steps=args.steps, guidance=args.guidance, seed=0, batch=16)
        gen_s = (time.perf_counter() - start) / len(scenes)
        noise = [smooth_noise(random.Random(i)) for i in range(len(scenes))]
        print(row(f"{kind}: generated", accuracy(images, scenes), gen_s))
        print(row(f"{kind}: real renders", accuracy(renders, scenes), render_s))
        print(row(f"{kind}: smooth noise", accuracy(noise, scenes)))
    if dev.is_cuda:
        print(f"peak GPU memory {dev.peak_memory_gib():.2f} GiB")


if __name__ == "__main__":
    main()
