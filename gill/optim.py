"""Optimizer and learning-rate schedule of the paper's run (docs/official-gill.md §2.5), without its quirks.

* AdamW, lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.01, over the **adapter parameters only**
  (the official code hands AdamW the whole model, so decay also shrinks the frozen vocabulary and the tied
  LM head in any fp32 re-implementation: official §2.6).
* Linear warm-up from 0 over ``warmup_steps`` (2,000), then the base rate, multiplied by ``gamma`` (0.1) every
  ``decay_every`` steps after warm-up (10,000): 1e-3 until step 12k, then 1e-4. The official scheduler loses
  one step per "epoch" (it breaks before the last scheduler step); ours is a pure function of the step, so a
  resumed run gets exactly the rates an uninterrupted run gets.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def lr_factor(step: int, warmup_steps: int = 2000, decay_every: int = 10000, gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    decays = (step - warmup_steps) // decay_every if decay_every > 0 else 0
    return gamma**decays


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.01,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the given (trainable, adapter-only) parameters; refuses frozen ones."""
    params = list(params)
    frozen = [i for i, p in enumerate(params) if not p.requires_grad]
    if frozen:
        raise ValueError(f"build_optimizer got {len(frozen)} frozen parameters; pass only trainable adapter parameters")
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, foreach=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int = 2000, decay_every: int = 10000, gamma: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying :func:`lr_factor`; step it once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps=warmup_steps, decay_every=decay_every, gamma=gamma)
    )
