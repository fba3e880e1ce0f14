"""ProcessFarm: processes that set up once and work through one queue; results in order, progress, errors, deaths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from farm_helpers import Step, failing_setup, setup, setup_failing_in_one_process, work

from gill.errors import InputError
from gill.utils import process_farm
from gill.utils.process_farm import ProcessFarm, ProcessFarmError


def farm(folder: Path, processes: int = 2, **kwargs) -> ProcessFarm:
    return ProcessFarm(processes, kwargs.pop("setup", setup), (str(folder),), work, **kwargs)


def started(folder: Path) -> set[str]:
    return {p.name.removeprefix("started-") for p in folder.glob("started-*")}


def assert_gone(pool: ProcessFarm, exitcode: int | None = 0) -> None:
    for process in pool.workers:
        assert not process.is_alive(), process
        if exitcode is not None:
            assert process.exitcode == exitcode, process


def test_results_come_back_in_item_order_from_every_process_with_their_progress(tmp_path):
    # a and b each wait until the other has started: they can only finish in two processes at the same time
    items = [Step("a", 1, progress=1, wait_for=("b",)), Step("b", 2, progress=2, wait_for=("a",))]
    items += [Step(f"n{i}", 10 + i, progress=i) for i in range(12)]
    seen: list[int] = []
    with farm(tmp_path, threads=2) as pool:
        assert pool.startup_s > 0
        results = pool.map(items, on_progress=seen.append)
        again = pool.map([Step("x", 5), Step("y", 6, progress=4)])  # a second map on the same processes
        assert pool.map([]) == []
        pids = {p.pid for p in pool.workers}
    assert [r.name for r in results] == [s.name for s in items]
    assert [r.doubled for r in results] == [2 * s.value for s in items]
    assert {r.pid for r in results[:2]} == pids and len(pids) == 2 and os.getpid() not in pids
    assert sorted(seen) == sorted(s.progress for s in items if s.progress) and sum(seen) == 3 + sum(range(12))
    assert [(r.name, r.doubled) for r in again] == [("x", 10), ("y", 12)]
    assert {r.pid for r in results + again} <= pids
    assert all(r.threads == 2 for r in results)  # torch threads set in each process
    assert all(r.setup_pid == r.pid for r in results + again)  # each process works with its own state
    assert len(list(tmp_path.glob("setup-*"))) == 2  # set up once per process, not per item or per map
    assert_gone(pool)  # leaving the context: every process told to stop, and exited cleanly


def test_core_groups_split_the_allowed_cores_into_disjoint_neighbours(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {6, 0, 2, 4, 1}, raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: None, raising=False)
    assert process_farm.core_groups(2) == [(0, 1), (2, 4)]  # 5 cores, 2 each: core 6 left to the others
    assert process_farm.core_groups(5) == [(0,), (1,), (2,), (4,), (6,)]
    assert process_farm.core_groups(6) is None  # more processes than cores: no pinning


def test_pinned_processes_run_on_their_own_cores(tmp_path):
    items = [Step("a", 1, wait_for=("b",)), Step("b", 2, wait_for=("a",))]  # one item in each process
    with farm(tmp_path, pin=True) as pool:
        results = pool.map(items)
    groups = process_farm.core_groups(2)
    if groups is None:  # fewer than 2 cores (or no affinity on this platform): the processes run where they like
        assert pool.groups is None
        assert all(r.cores == tuple(sorted(os.sched_getaffinity(0))) for r in results)
    else:
        assert sorted(r.cores for r in results) == sorted(groups) and results[0].cores != results[1].cores
    (tmp_path / "free").mkdir()
    with farm(tmp_path / "free", processes=2) as pool:  # not pinned by default
        free = pool.map([Step("c", 1)])
    assert pool.groups is None and free[0].cores == tuple(sorted(os.sched_getaffinity(0)))


def test_farms_started_together_set_up_at_the_same_time_and_each_works(tmp_path):
    folders = [tmp_path / "one", tmp_path / "two"]
    pools = [farm(f, processes=1) for f in folders]
    for folder, pool in zip(folders, pools, strict=True):
        folder.mkdir()
        pool.start()
    try:
        for pool in pools:
            assert pool.wait_ready() is pool and pool.startup_s > 0
        assert [pool.map([Step("s", i)])[0].doubled for i, pool in enumerate(pools)] == [0, 2]
    finally:
        for pool in pools:
            pool.close()
    assert all(len(list(f.glob("setup-*"))) == 1 for f in folders)
    for pool in pools:
        assert_gone(pool)


PRELOAD_PROBE = """
import sys
from concurrent.futures import ProcessPoolExecutor
from farm_helpers import imported
from gill.utils.process_farm import worker_context

context = worker_context("forkserver", preload=tuple(sys.argv[1:]))
with ProcessPoolExecutor(1, mp_context=context) as pool:
    print(pool.submit(imported, "wave").result())
"""


def test_a_forkserver_context_starts_processes_with_its_preloaded_modules_imported():
    """In fresh interpreters (a forkserver preloads only when it starts): a module nothing else imports is there
    in the child when asked for, and only then."""
    here = Path(__file__).parent
    runs = [
        subprocess.Popen([sys.executable, "-c", PRELOAD_PROBE, *preload], cwd=here, stdout=subprocess.PIPE, text=True)
        for preload in (("wave",), ())
    ]
    assert [run.communicate(timeout=120)[0].strip() for run in runs] == ["True", "False"]
    assert [run.returncode for run in runs] == [0, 0]


def test_the_first_error_is_raised_with_its_problems_and_later_items_do_not_start(tmp_path):
    items = [Step("ok0", 1), Step("bad", fail="input"), Step("ok2", 2), Step("ok3", 3)]
    with farm(tmp_path, processes=1) as pool:
        with pytest.raises(InputError) as err:
            pool.map(items)
        assert started(tmp_path) == {"ok0", "bad"}  # the error stopped the farm: ok2 and ok3 never started
        assert err.value.message == "broken item bad" and err.value.problems == ["bad: cannot be read"]
        assert err.value.hint == "replace it" and "bad: cannot be read" in str(err.value)
        with pytest.raises(RuntimeError, match=r"^TwoPartError: odd item u$"):  # cannot come back as itself
            pool.map([Step("u", fail="unpicklable")])
        assert [r.doubled for r in pool.map(items[2:])] == [4, 6]  # the farm works on after an error
    assert_gone(pool)


def test_items_in_progress_finish_before_the_error_is_raised(tmp_path):
    # slow waits for bad to start, then takes a while: the error of bad is raised only once slow has finished
    items = [Step("slow", 1, wait_for=("bad",), delay_s=0.5), Step("bad", fail="input")]
    with farm(tmp_path) as pool:
        with pytest.raises(InputError, match="broken item bad"):
            pool.map(items)
        assert (tmp_path / "finished-slow").exists()
    assert_gone(pool)


def test_a_setup_error_is_raised_on_enter_and_no_process_is_left(tmp_path):
    pool = farm(tmp_path, setup=failing_setup)
    with pytest.raises(InputError) as err:
        with pool:
            pytest.fail("entered a farm whose setup failed")
    assert err.value.problems == [f"{tmp_path}: no model here"] and err.value.hint == "build the zoo first"
    assert_gone(pool)


def test_a_setup_error_in_one_process_is_raised_while_the_others_still_set_up(tmp_path):
    # the failed process has exited well before the others are ready: that is its error, not a death
    pool = farm(tmp_path, setup=setup_failing_in_one_process)
    with pytest.raises(InputError, match="only one process fails"):
        with pool:
            pytest.fail("entered a farm whose setup failed")
    assert_gone(pool)


def test_a_process_killed_during_an_item_is_an_error_naming_the_item(tmp_path):
    # the doomed item dies once the parent has seen its progress (so the parent knows which item it had)
    items = [Step("doomed", progress=1, die=True), *[Step(f"n{i}", i) for i in range(4)]]
    with farm(tmp_path) as pool:
        with pytest.raises(ProcessFarmError) as err:
            pool.map(items, on_progress=lambda n: (tmp_path / "seen-doomed").touch())
        assert_gone(pool, exitcode=None)  # the survivor is stopped too
    text = str(err.value)
    assert f"while working on {items[0]!r}" in text and f"exit code {-signal.SIGKILL}" in text
    assert "fewer processes" in text  # the hint
    assert sorted(p.exitcode for p in pool.workers) == [-signal.SIGKILL, 0]


def test_leaving_the_context_terminates_a_process_that_does_not_finish_its_item(tmp_path, monkeypatch):
    monkeypatch.setattr(process_farm, "STOP_TIMEOUT_S", 1.0)

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt  # the user presses Ctrl-C while an item runs

    with pytest.raises(KeyboardInterrupt):
        with farm(tmp_path, processes=1) as pool:
            pool.map([Step("stuck", progress=1, hang=True), Step("next")], on_progress=interrupt)
    assert started(tmp_path) == {"stuck"}
    assert_gone(pool, exitcode=-signal.SIGTERM)
