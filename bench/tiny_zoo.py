"""How fast the tiny zoo is on this CPU: the foundation's promise that a training step takes milliseconds.

Run: ``.venv/bin/python bench/tiny_zoo.py [--device cuda --dtype bf16]``. Prints milliseconds per operation and
each one's ratio to a baseline measured in the same run (one no-grad LM forward over a 32-token caption), so figures
compare across machines.

``--device`` moves the models and inputs there and synchronises before each timing; ``--dtype`` runs the LM and
vision forwards and the LM train step under autocast in that type (fp32 weights, as the trainer keeps them) and
casts the Stable Diffusion pipeline to it (as inference loads it). On CUDA the peak GPU memory is printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from device import DeviceChoice, add_device_arguments, resolve_device
from timing import median_ms

from gill.factory import load_backbones
from gill.presets import get_preset


def timed(fn: Callable[[], object], dev: DeviceChoice, repeats: int = 15) -> float:
    """:func:`median_ms` of ``fn`` with the device synchronised after each call."""

    def run() -> None:
        fn()
        dev.synchronize()

    return median_ms(run, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    dev = resolve_device(args)
    torch.set_num_threads(args.threads)
    config = get_preset("tiny")
    models = load_backbones(config, roles=("lm", "vision", "sd"))
    lm, vision = models.lm.to(dev.device), models.vision.to(dev.device)
    sd = models.sd.to(dev.device, dev.dtype)
    vocab = lm.config.vocab_size
    ids = torch.randint(3, vocab, (1, 32), device=dev.device)
    batch = torch.randint(3, vocab, (16, 32), device=dev.device)
    pixels = torch.randn(16, 3, 32, 32, device=dev.device)
    optim = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    autocast = torch.autocast(dev.device.type, dtype=dev.dtype, enabled=dev.dtype != torch.float32)

    def train_step() -> None:
        lm.train()
        with autocast:
            loss = lm(input_ids=batch, labels=batch).loss
        optim.zero_grad()
        loss.backward()
        optim.step()

    def forward() -> None:
        lm.eval()
        with torch.no_grad(), autocast:
            lm(input_ids=ids)

    def vision_forward() -> None:
        with torch.no_grad(), autocast:
            vision(pixel_values=pixels)

    def sd_image() -> None:
        sd("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0))

    print(f"device {dev.describe()}")
    dev.reset_peak_memory()
    baseline = timed(forward, dev)
    rows = {
        "LM forward, 1x32 tokens (baseline)": baseline,
        "LM train step, batch 16x32": timed(train_step, dev),
        "CLIP vision forward, batch 16": timed(vision_forward, dev),
        "SD image, 5 steps, 64x64": timed(sd_image, dev, repeats=5),
    }
    for name, ms in rows.items():
        print(f"{name:40s} {ms:8.2f} ms   x{ms / baseline:6.1f} of baseline")
    if dev.is_cuda:
        print(f"peak GPU memory {dev.peak_memory_gib():.2f} GiB")


if __name__ == "__main__":
    main()
