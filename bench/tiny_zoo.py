"""How fast the tiny zoo is on this CPU: the foundation's promise that a training step takes milliseconds.

Run: ``.venv/bin/python bench/tiny_zoo.py``. Prints milliseconds per operation and each one's ratio to a
baseline measured in the same run (one no-grad LM forward over a 32-token caption), so figures compare
across machines.
"""

from __future__ import annotations

import torch
from timing import median_ms

from gill.factory import load_backbones
from gill.presets import get_preset


def main() -> None:
    torch.set_num_threads(2)
    config = get_preset("tiny")
    models = load_backbones(config, roles=("lm", "vision", "sd"))
    ids = torch.randint(3, models.lm.config.vocab_size, (1, 32))
    batch = torch.randint(3, models.lm.config.vocab_size, (16, 32))
    pixels = torch.randn(16, 3, 32, 32)
    lm = models.lm.train()
    optim = torch.optim.AdamW(lm.parameters(), lr=1e-3)

    def train_step() -> None:
        loss = lm(input_ids=batch, labels=batch).loss
        optim.zero_grad()
        loss.backward()
        optim.step()

    def forward() -> None:
        with torch.no_grad():
            lm(input_ids=ids)

    def sd_image() -> None:
        models.sd("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0))

    baseline = median_ms(forward)
    rows = {
        "LM forward, 1x32 tokens (baseline)": baseline,
        "LM train step, batch 16x32": median_ms(train_step),
        "CLIP vision forward, batch 16": median_ms(lambda: models.vision(pixel_values=pixels)),
        "SD image, 5 steps, 64x64": median_ms(sd_image, repeats=5),
    }
    for name, ms in rows.items():
        print(f"{name:40s} {ms:8.2f} ms   x{ms / baseline:6.1f} of baseline")


if __name__ == "__main__":
    main()
