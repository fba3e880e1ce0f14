"""Test helper: setup and work functions for :class:`gill.utils.process_farm.ProcessFarm` (module level, so that
the farm's processes import them by name).

The processes and the test meet through files in a folder: each item touches ``started-<name>`` when it starts
and ``finished-<name>`` when it ends well; an item can wait for other items to have started (so that two items are
known to run at the same time, in two processes) or for a file the parent writes (so that the parent is known to
have heard from it). Waits poll with a long deadline: a loaded machine makes them slower, never wrong.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from gill.errors import InputError

WAIT_S = 120.0
"""Longest wait for a file (a deadline for a broken farm, not a pace)."""


class TwoPartError(Exception):
    """An error that pickles but does not unpickle (its ``__init__`` needs two arguments, ``args`` holds one)."""

    def __init__(self, text: str, code: int) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class State:
    """What :func:`setup` returns: loaded once per process."""

    folder: Path
    pid: int


@dataclass(frozen=True)
class Step:
    """One item of work."""

    name: str
    value: int = 0
    progress: int = 0
    """Units reported with ``report`` (0: none)."""
    wait_for: tuple[str, ...] = ()
    """Items that must have started (in another process) before this one goes on."""
    delay_s: float = 0.0
    """Extra time taken before ending (only to make a wrong early answer of the farm visible)."""
    fail: Literal["input", "unpicklable"] | None = None
    die: bool = False
    """Kill the process with SIGKILL, once the parent has seen this item's progress (file ``seen-<name>``)."""
    hang: bool = False
    """Never end on its own (until ``WAIT_S``)."""


@dataclass(frozen=True)
class Done:
    """What :func:`work` returns for a step."""

    name: str
    doubled: int
    pid: int
    threads: int
    setup_pid: int
    cores: tuple[int, ...]
    """The cores the process may run on."""


def wait_for(path: Path, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.01)


def setup(folder: str) -> State:
    """Touch ``setup-<pid>`` (one per process that set up) and keep the folder."""
    (Path(folder) / f"setup-{os.getpid()}").touch()
    return State(Path(folder), os.getpid())


def failing_setup(folder: str) -> State:
    raise InputError("cannot load the encoders", [f"{folder}: no model here"], hint="build the zoo first")


def setup_failing_in_one_process(folder: str) -> State:
    """The first process to get here fails at once; the others succeed, but only a few polls of the parent
    (``POLL_S`` = 0.5 s) after that: time for a farm that took the failed process for a dead one to say so."""
    try:
        os.close(os.open(Path(folder) / "claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        wait_for(Path(folder) / "first-failed")
        time.sleep(2.0)
        return setup(folder)
    (Path(folder) / "first-failed").touch()
    raise InputError("only one process fails", ["setup: the first one"])


def work(state: State, step: Step, report: Callable[[int], None]) -> Done:
    """Run ``step`` (see :class:`Step`)."""
    (state.folder / f"started-{step.name}").touch()
    for other in step.wait_for:
        wait_for(state.folder / f"started-{other}")
    if step.progress:
        report(step.progress)
    if step.die:
        wait_for(state.folder / f"seen-{step.name}")
        os.kill(os.getpid(), signal.SIGKILL)
    if step.hang:
        wait_for(state.folder / "never")
    time.sleep(step.delay_s)
    if step.fail == "input":
        raise InputError(f"broken item {step.name}", [f"{step.name}: cannot be read"], hint="replace it")
    if step.fail == "unpicklable":
        raise TwoPartError(f"odd item {step.name}", 7)
    (state.folder / f"finished-{step.name}").touch()
    cores = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    return Done(step.name, step.value * 2, os.getpid(), torch.get_num_threads(), state.pid, cores)


def imported(module: str) -> bool:
    """Whether ``module`` is imported in this process (a child: before it ran anything but this call)."""
    return module in sys.modules
