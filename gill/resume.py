"""Resumable training checkpoints: ``step-{:08d}/`` folders with everything needed to continue exactly.

A folder holds ``adapters.safetensors`` (trainable weights) and ``train_state.pt`` (optimizer, scheduler,
RNG states, data position and any counters). ``load(step=-1)`` restores the newest; ``keep_last`` bounds disk
use. (Interface after torchtitan's checkpointer: ``save(step, state)``, ``load(step)``, ``latest_step()``.)

Safety:

* **Atomic**: a step folder is built under a temporary name and renamed into place, and an old one is renamed
  away before it is deleted, so a kill at any moment leaves whole checkpoints only (plus a temporary leftover
  the next save removes).
* **No code on load**: ``train_state.pt`` holds tensors and plain containers only (RNG states as tensors,
  dataclasses as dicts) and is read with ``torch.load(weights_only=True)``: a run folder from elsewhere cannot
  run code when resumed; a file holding anything else is refused.
* **One writer**: :class:`RunLock` lets one process at a time train a run.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import logging
import os
import pickle
import random
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gill.errors import InputError
from gill.utils.io import atomic_directory, remove_stale_temp_dirs, remove_tree

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
WEIGHTS_FILE = "adapters.safetensors"
STATE_FILE = "train_state.pt"
LOCK_FILE = "train.lock"
"""In the run folder: ``flock``-ed by the process training the run (it names that process)."""


# -- RNG states as tensors -----------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Every global RNG state a training step may consume (python, numpy, torch CPU and CUDA), as tensors and plain
    values (loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states of :func:`capture_rng`."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(int(x) for x in python["state"].tolist()), python["gauss"]))
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- one process per run ---------------------------------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/train.lock``: while one process trains a run, others are refused.

    The kernel drops the lock when the holding process exits, however it ends (a kill included), so a crashed
    run never stays locked.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the run folder); InputError naming the run and the holder when it is taken."""
        if self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise InputError(
                f"run {self.run_dir.name!r} is being trained by another process",
                [f"{self.path} is locked by {holder}"],
                hint="wait for that run to finish (or stop it), or pick another --run-id",
            ) from None
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (no-op when not held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


# -- checkpoints ------------------------------------------------------------------------------------------------


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
        """Steps with a complete checkpoint (both files), ascending."""
        if not self.root.is_dir():
            return []
        found = (STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m and self._complete(self.root / m.group(0)))

    @staticmethod
    def _complete(folder: Path) -> bool:
        return (folder / STATE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
        """Write ``step-{step:08d}/`` atomically, then delete all but the newest ``keep_last``.

        ``state`` must hold tensors and plain containers only (see the module docstring); leftovers of an
        interrupted save are removed first.
        """

        remove_stale_temp_dirs(self.root)
        path = self.root / f"step-{step:08d}"
        with atomic_directory(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
            torch.save({"step": step, **state}, tmp / STATE_FILE)
        for old in self.steps()[: -self.keep_last]:
            remove_tree(self.root / f"step-{old:08d}")
        logger.info("saved checkpoint %s", path)
        return path

    def load(self, step: int = -1) -> TrainingCheckpoint:
        """Load ``step`` (``-1``: the newest). Raises InputError listing the available steps when absent, or when
        its ``train_state.pt`` holds anything but tensors and plain containers."""

        steps = self.steps()
        chosen = steps[-1] if step == -1 and steps else step
        if chosen not in steps:
            raise InputError(
                f"no checkpoint for step {step} under {self.root}", [f"available steps: {steps or 'none'}"]
            )
        path = self.root / f"step-{chosen:08d}"
        state = load_train_state(path / STATE_FILE)
        return TrainingCheckpoint(
            step=state.pop("step"), weights=load_file(str(path / WEIGHTS_FILE)), state=state, path=path
        )


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a ``train_state.pt`` with ``weights_only=True``: tensors and plain containers, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"refused to load {path}: it holds objects other than tensors and plain containers",
            [f"weights-only loading failed: {first}"],
            hint="resume only run folders you trust; a train_state.pt pickled by an older gill cannot be resumed "
            "safely: start a new run (or pass another --run-id)",
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise InputError(f"cannot read {path}", [str(err)], hint="resume from another run or start a new one") from err
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise InputError(f"{path} is not a gill train_state.pt", ["expected a dict with an int 'step'"])
    return state
