"""Resumable training checkpoints: ``step-{:08d}/`` folders with everything needed to continue exactly.

A folder holds ``adapters.safetensors`` (trainable weights) and ``train_state.pt`` (optimizer, scheduler,
RNG states, data position and any counters), written atomically, so a crash mid-save leaves the previous
checkpoint intact. ``load(step=-1)`` restores the newest; ``keep_last`` bounds disk use. (Interface after
torchtitan's checkpointer: ``save(step, state)``, ``load(step)``, ``latest_step()``.)
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gill.errors import InputError
from gill.utils.io import atomic_directory

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")


def capture_rng() -> dict[str, Any]:
    """Every global RNG state a training step may consume (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(kw_only=True)
class TrainingCheckpoint:
    """What :meth:`CheckpointManager.load` returns."""

    step: int
    """Optimizer steps completed when it was saved."""
    weights: dict[str, torch.Tensor]
    """Trainable weights by name."""
    state: dict[str, Any]
    """Optimizer/scheduler state dicts, RNG states, data position, counters."""
    path: Path
    """The step folder."""


class CheckpointManager:
    """Save and load step checkpoints under ``root`` (e.g. ``<workdir>/runs/<run_id>/checkpoints``)."""

    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        if not self.root.is_dir():
            return []
        found = (STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m and (self.root / m.group(0) / "train_state.pt").is_file())

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
        """Write ``step-{step:08d}/`` atomically, then delete all but the newest ``keep_last``."""
        from safetensors.torch import save_file

        path = self.root / f"step-{step:08d}"
        with atomic_directory(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "adapters.safetensors"))
            torch.save({"step": step, **state}, tmp / "train_state.pt")
        for old in self.steps()[: -self.keep_last]:
            shutil.rmtree(self.root / f"step-{old:08d}", ignore_errors=True)
        logger.info("saved checkpoint %s", path)
        return path

    def load(self, step: int = -1) -> TrainingCheckpoint:
        """Load ``step`` (``-1``: the newest). Raises InputError listing the available steps when absent."""
        from safetensors.torch import load_file

        steps = self.steps()
        chosen = steps[-1] if step == -1 and steps else step
        if chosen not in steps:
            raise InputError(
                f"no checkpoint for step {step} under {self.root}", [f"available steps: {steps or 'none'}"]
            )
        path = self.root / f"step-{chosen:08d}"
        state = torch.load(path / "train_state.pt", map_location="cpu", weights_only=False)
        return TrainingCheckpoint(step=state.pop("step"), weights=load_file(str(path / "adapters.safetensors")),
                                  state=state, path=path)  # fmt: skip
