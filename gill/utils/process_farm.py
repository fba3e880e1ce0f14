"""Processes that each set up once (load models) and then work through items of one shared queue.

The precompute stage uses it on a CPU: there the frozen forward and the preparation of its inputs share the
cores, and N processes that each do both for whole shards on one core keep N cores busy with no hand-over between
threads and no shared GIL (a tiny encoder's forward spends most of its time in Python), which a pipeline inside one
process cannot. Each process holds its own copy of the models.

Items go to whichever process is free; results come back in item order. Progress is reported per unit of work
(``report(n)`` in the child reaches ``on_progress(n)`` in the parent). The first error stops the farm from starting
new items: the items in progress finish (their results are kept, as their outputs are written atomically), then the
error is raised in the parent with its own type and message. A process that dies (killed, out of memory) is reported
with the item it was working on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, Generic, Literal, TypeVar

import torch

from gill.errors import GillError

logger = logging.getLogger(__name__)

S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")

Kind = Literal["ready", "started", "progress", "done", "skipped", "error"]
POLL_S = 0.5
"""How often the parent checks that its processes are alive while it waits for a message."""
PROGRESS_S = 0.5
"""Least seconds between two progress messages of a farm process."""
STOP_TIMEOUT_S = 30.0
"""How long closing waits for a process to finish before terminating it."""


class ProcessFarmError(GillError):
    """A farm process died (killed, out of memory) or could not report its error."""


@dataclass(frozen=True)
class Message:
    """What a farm process tells the parent."""

    kind: Kind
    worker: int
    """Index of the process."""
    position: int = -1
    """Position of the item in the list given to :meth:`ProcessFarm.map` (-1: none)."""
    payload: Any = None
    """A result (done), a unit count (progress), an exception (error)."""


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_context(name: str, preload: Sequence[str] = ()) -> BaseContext:
    """The multiprocessing context ``name``; for ``forkserver``, its server is asked to import ``preload`` (and
    ``__main__``, its default) once, before it forks any process.

    A process forked from the server starts with those modules already imported: importing torch and
    transformers anew takes a few seconds of CPU per process, which several farms and worker pools started at once
    on a few cores pay one after the other. The server is started by the first process of a forkserver context:
    a later call cannot change what a running server preloaded (its processes then import the rest themselves)."""
    context = multiprocessing.get_context(name)
    if name == "forkserver":
        context.set_forkserver_preload(["__main__", *dict.fromkeys(preload)])
    return context


def core_groups(processes: int) -> list[tuple[int, ...]] | None:
    """The cores this process may run on, split into ``processes`` disjoint groups of ``cores() // processes``
    (in CPU numbering order, so a group's cores are neighbours), or None where that is impossible: more processes
    than cores, or a platform without ``os.sched_setaffinity``."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    size = len(allowed) // processes
    if size == 0:
        return None
    return [tuple(allowed[i * size : (i + 1) * size]) for i in range(processes)]


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - any failure to round-trip: send its text instead
        return RuntimeError(f"{type(err).__name__}: {err}")


def _serve(
    worker: int,
    setup: Callable[..., Any],
    setup_args: tuple[Any, ...],
    work: Callable[[Any, Any, Callable[[int], None]], Any],
    threads: int,
    group: tuple[int, ...] | None,
    tasks: Any,
    results: Any,
    stop: Any,
) -> None:
    """A farm process: pin itself to its cores (``group``, if any), set up, then take items until the ``None``
    that closes it."""
    if group is not None:
        os.sched_setaffinity(0, group)
    torch.set_num_threads(threads)
    try:
        state = setup(*setup_args)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(Message("error", worker, payload=_picklable(err)))
        tasks.get()  # exit only when closed: a process that exits now looks dead to the parent still waiting
        return
    results.put(Message("ready", worker))
    while (task := tasks.get()) is not None:
        position, item = task
        if stop.is_set():
            results.put(Message("skipped", worker, position))
            continue
        results.put(Message("started", worker, position))
        progress = Progress(lambda n, p=position: results.put(Message("progress", worker, p, n)))
        try:
            result = work(state, item, progress.report)
        except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
            stop.set()
            results.put(Message("error", worker, position, _picklable(err)))
            continue
        progress.flush()
        results.put(Message("done", worker, position, result))


class Progress:
    """Units of work reported by ``work``: the first report of an item is sent at once, later ones at most every
    ``PROGRESS_S`` seconds, the rest when the item ends. Each message wakes the queue's feeder thread, whose turn
    at the GIL costs the work a thread switch: a few percent of a small model's forward when sent per batch."""

    def __init__(self, send: Callable[[int], None]) -> None:
        self.send, self.pending, self.last = send, 0, -PROGRESS_S

    def report(self, n: int) -> None:
        self.pending += n
        if time.monotonic() - self.last >= PROGRESS_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.send(self.pending)
        self.pending, self.last = 0, time.monotonic()


class ProcessFarm(Generic[S, I, R]):
    """``processes`` processes running ``setup(*setup_args)`` once, then ``work(state, item, report)`` per item.

    ``setup`` and ``work`` must be module-level functions (they are imported by the new processes), items and
    results picklable. Use as a context manager: entering starts the processes and waits until each has set up
    (``startup_s`` is how long that took; a setup error is raised there), leaving closes them.

    ``pin``: each process runs on its own group of ``cores() // processes`` cores (:func:`core_groups`; ignored
    where there are fewer cores than processes). On a machine given to the farm this spares the processes the
    scheduler's moves between cores, and their caches the refills that follow: the tiny precompute's two shard
    processes on two cores ran 1.5-3% faster pinned than not, in the same rounds. Leave it off where other work
    shares the cores: a pinned process cannot move to an idle core.
    """

    def __init__(
        self,
        processes: int,
        setup: Callable[..., S],
        setup_args: tuple[Any, ...],
        work: Callable[[S, I, Callable[[int], None]], R],
        *,
        threads: int = 1,
        pin: bool = False,
        context: str = "forkserver",
    ) -> None:
        self.processes, self.threads = processes, threads
        self.groups = core_groups(processes) if pin else None
        """Each process's cores, where pinned."""
        ctx = worker_context(context, preload=("torch", setup.__module__, work.__module__))
        self.tasks, self.results, self.stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.workers = [
            ctx.Process(
                target=_serve,
                args=(
                    i,
                    setup,
                    setup_args,
                    work,
                    threads,
                    None if self.groups is None else self.groups[i],
                    self.tasks,
                    self.results,
                    self.stop,
                ),
                name=f"gill-farm-{i}",
                daemon=True,
            )
            for i in range(processes)
        ]
        self.current: dict[int, int] = {}
        """Process index -> position of the item it works on."""
        self.startup_s = 0.0
        """Seconds from :meth:`start` until every process had set up."""
        self._started = 0.0

    def __enter__(self) -> ProcessFarm[S, I, R]:
        self.start()
        return self.wait_ready()

    def start(self) -> None:
        """Start the processes without waiting for them (:meth:`wait_ready` waits): several farms can then set up
        at the same time. Entering the farm does both."""
        self._started = time.perf_counter()
        for process in self.workers:
            process.start()

    def wait_ready(self) -> ProcessFarm[S, I, R]:
        """Wait until every process has set up; raise the first setup error (after closing the farm)."""
        ready, errors = set(), []
        try:
            while len(ready) + len(errors) < self.processes:
                message = self._next(items=None)
                if message.kind == "ready":
                    ready.add(message.worker)
                elif message.kind == "error":
                    errors.append(message.payload)
            if errors:
                raise errors[0]
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - self._started
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, items: Sequence[I], on_progress: Callable[[int], None] | None = None) -> list[R]:
        """``work`` over ``items``, results in item order; the first error is raised once the items in progress
        have finished."""
        self.stop.clear()
        for position, item in enumerate(items):
            self.tasks.put((position, item))
        results: dict[int, R] = {}
        first_error: BaseException | None = None
        ended = 0
        while ended < len(items):
            message = self._next(items=items)
            if message.kind == "started":
                self.current[message.worker] = message.position
            elif message.kind == "progress" and on_progress is not None:
                on_progress(message.payload)
            elif message.kind in ("done", "skipped", "error"):
                ended += 1
                self.current.pop(message.worker, None)
                if message.kind == "done":
                    results[message.position] = message.payload
                elif message.kind == "error" and first_error is None:
                    first_error = message.payload
        if first_error is not None:
            raise first_error
        return [results[p] for p in range(len(items))]

    def _next(self, items: Sequence[I] | None) -> Message:
        """The next message; a process that died raises :class:`ProcessFarmError` naming its item."""
        while True:
            try:
                return self.results.get(timeout=POLL_S)
            except queue.Empty:
                pass
            for i, process in enumerate(self.workers):
                if not process.is_alive():
                    try:  # what it sent before it died comes first (it may name the item it started)
                        return self.results.get(timeout=POLL_S)
                    except queue.Empty:
                        pass
                    position = self.current.get(i)
                    doing = (
                        f"while working on {items[position]!r}"
                        if items is not None and position is not None
                        else ("while setting up" if items is None else "between items")
                    )
                    self.close()
                    raise ProcessFarmError(
                        f"farm process {i} died {doing} (exit code {process.exitcode})",
                        hint="a process killed by the system ran out of memory: use fewer processes",
                    )

    def close(self) -> None:
        """Let each process finish its item and exit; terminate those that do not within ``STOP_TIMEOUT_S``."""
        self.stop.set()
        for process in self.workers:
            if process.is_alive():
                self.tasks.put(None)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.workers:
            if process.pid is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning(
                    "farm process %s did not stop within %.0f s: terminating it", process.name, STOP_TIMEOUT_S
                )
                process.terminate()
                process.join()
        self.tasks.cancel_join_thread()
        self.results.cancel_join_thread()
