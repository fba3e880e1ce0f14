"""Benchmarks sharded over several processes (GPUs or CPU workers): which samples a process scores, where its rows
go, and how one writer merges them into the store.

A paper-scale evaluation is hours of image generation per GPU, and every sample is independent (its SD seed is
``derive_seed(run_seed, sample_id)``), so the samples of each setting are split over processes:

* :class:`Sharding` says which share a process scores: position ``i`` of a setting's item list goes to shard
  ``i mod count``. The rule depends on neither the order samples run in nor which are already scored, so a resumed
  run assigns the same (the item lists are read from the same files in the same order), and the shares differ in
  size by at most one sample (a hash of the sample id would not balance a small benchmark).
* A shard process scores its share for every seed, as a single process would, but writes its ``samples`` rows to
  its own Parquet files (:class:`ShardRecorder`),
  ``W/bench/<run_id>/shards/<benchmark>/<setting>/shard<k>-<n>.parquet``,
  one file per ``write_every`` samples, each written atomically and never changed: DuckDB allows one writing
  process per database file, and a crashed shard loses at most its unwritten samples. A shard resumes from the
  store's rows and every shard file of its setting (so even a run restarted with another shard count redoes
  nothing already scored).
* One writer merges the shard files into the store (:func:`merge_shard_files`: one transaction, keyed by run,
  benchmark, setting, system, seed and sample id, so a file merged twice or a sample scored twice is still one
  row; the rows stored are counted against the rows read before the files are removed), registers the run and
  computes the retrieval recall (it needs every sample's embeddings), FID and ``results`` once, from the merged
  rows, exactly as a single-process run does.

Three ways to start the shards: ``torchrun --nproc_per_node N -m flows.command bench ...`` (:func:`sharding_from_env`:
rank ``RANK`` of ``WORLD_SIZE``, device ``cuda:LOCAL_RANK``; the ranks meet at gloo barriers and rank 0 is the
writer), ``gill bench ... --num-workers N`` (:func:`run_workers`: N local worker processes, then this process
merges and summarises; the flow's ``bench_workers`` parameter does the same), or ``--shard-index K --num-shards N``
by hand, e.g. one job per machine on a shared filesystem, followed by one plain run that merges and summarises.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from flows.stages.bench_record import BenchRecorder, Counts
from flows.store import TABLES, connect
from gill.config import _Validated
from gill.errors import ConfigError, GillError, InputError, MissingWeightsError
from gill.utils.io import atomic_write_bytes
from gill.utils.process_farm import cores

logger = logging.getLogger(__name__)

T = TypeVar("T")

SAMPLE_KEY = TABLES["samples"].key
"""The columns that identify a ``samples`` row: what a merge replaces by."""
SHARD_FILE = re.compile(r"^shard(?P<index>\d+)-(?P<seq>\d+)\.parquet$")
BARRIER_TIMEOUT = dt.timedelta(hours=24)
"""How long a torchrun rank waits at a barrier for the others (a rank that finishes its share early waits for the
slowest; a crashed rank ends the whole job through torchrun, not through this timeout)."""
WORKER_MODULE = "flows.stages.bench_worker"
"""What a ``--num-workers`` worker process runs (``python -m``)."""


# -- which samples a process scores ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sharding:
    """This process's share of a benchmark: shard ``index`` of ``count``."""

    index: int = 0
    count: int = 1
    distributed: bool = False
    """Under torchrun: the ranks meet at barriers (torch.distributed, gloo) and rank 0 merges and summarises. Else a
    shard process only scores its share, and a later (or parent) process merges."""
    local_index: int = 0
    """The process's index on its machine (torchrun's ``LOCAL_RANK``): which GPU it uses."""

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError(f"shard {self.index} of {self.count}", ["need 0 <= shard index < shard count"])

    @property
    def is_sharded(self) -> bool:
        """Whether the samples are split over several processes."""
        return self.count > 1

    @property
    def merges(self) -> bool:
        """Whether this process writes the store: the only process, or rank 0 under torchrun."""
        return not self.is_sharded or (self.distributed and self.index == 0)

    def owns(self, position: int) -> bool:
        """Whether the sample at ``position`` of a setting's item list is this process's."""
        return position % self.count == self.index

    def select(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items`` (every item when not sharded)."""
        return [item for position, item in enumerate(items) if self.owns(position)]

    def device(self, device: str) -> str:
        """The torch device of this process: ``cuda`` becomes ``cuda:<local index mod GPU count>`` when sharded (one
        GPU per process); an explicit ``cuda:N`` or ``cpu`` stays."""
        gpus = torch.cuda.device_count() if device == "cuda" and self.is_sharded else 0
        return f"cuda:{self.local_index % gpus}" if gpus else device

    def barrier(self) -> None:
        """Under torchrun: wait until every rank is here (a no-op otherwise)."""
        if self.distributed:
            dist.barrier()

    def describe(self) -> str:
        return f"shard {self.index + 1} of {self.count}"


@dataclass(frozen=True, kw_only=True)
class ShardOptions(_Validated):
    """How a benchmark call is spread over processes (besides torchrun, which needs no option)."""

    num_workers: int = 1
    """Local worker processes that share the samples (each loads the models; with device cuda, worker k uses GPU k
    mod the GPU count); this process then merges their rows and computes the results once."""
    shard_index: int | None = None
    """Score only this shard (0-based) of --num-shards, writing rows to shard files under
    W/bench/<run_id>/shards/; a later run without it merges them and computes the results."""
    num_shards: int | None = None
    """The number of shards --shard-index counts in."""

    def _problems(self) -> list[str]:
        problems = []
        if self.num_workers < 1:
            problems.append(f"num_workers: must be >= 1, got {self.num_workers}")
        if (self.shard_index is None) != (self.num_shards is None):
            problems.append("shard_index and num_shards: give both or neither")
        elif self.num_shards is not None and self.shard_index is not None:
            if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
                problems.append(f"shard_index: must be in [0, num_shards), got {self.shard_index} of {self.num_shards}")
            if self.num_workers > 1:
                problems.append("num_workers: a single shard (shard_index) runs in one process")
        return problems


@dataclass(frozen=True, kw_only=True)
class Launch:
    """How this call runs: its own share (``sharding``) and how many local workers it starts first."""

    sharding: Sharding = Sharding()
    workers: int = 1


def launch_from(options: ShardOptions, environ: Mapping[str, str] = os.environ) -> Launch:
    """The launch a command asks for: torchrun's environment, else ``--shard-index``, else ``--num-workers``."""
    under_torchrun = sharding_from_env(environ)
    if under_torchrun.is_sharded:
        if options.num_workers > 1 or options.shard_index is not None:
            raise InputError(
                f"under torchrun (WORLD_SIZE={under_torchrun.count}) the ranks are the shards",
                ["leave out --num-workers, --shard-index and --num-shards"],
            )
        return Launch(sharding=under_torchrun)
    if options.shard_index is not None and options.num_shards is not None:
        index = options.shard_index
        return Launch(sharding=Sharding(index=index, count=options.num_shards, local_index=index))
    return Launch(workers=options.num_workers)


def sharding_from_env(environ: Mapping[str, str] = os.environ) -> Sharding:
    """The sharding torchrun describes (``RANK`` of ``WORLD_SIZE``, ``LOCAL_RANK``); unsharded outside torchrun."""
    count = int(environ.get("WORLD_SIZE", "1"))
    if count <= 1:
        return Sharding()
    index = int(environ.get("RANK", "0"))
    return Sharding(index=index, count=count, distributed=True, local_index=int(environ.get("LOCAL_RANK", index)))


@contextmanager
def process_group(sharding: Sharding) -> Iterator[None]:
    """Under torchrun, join the ranks' gloo process group for the barriers (left again at the end)."""
    joined = sharding.distributed and not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        if joined:
            dist.destroy_process_group()


# -- shard files -----------------------------------------------------------------------------------------------------


def shard_root(workdir: str | Path, run_id: str) -> Path:
    """Where the shard files of a benchmark run go (``W/bench/<run_id>/shards``)."""
    return Path(workdir) / "bench" / run_id / "shards"


class ShardRecorder(BenchRecorder):
    """A :class:`~flows.stages.bench_record.BenchRecorder` for a shard process: ``samples`` rows go to this shard's
    own Parquet files instead of the store, which it only reads (to resume), and the run's registration,
    unsupported systems and ``results`` are left to the writer."""

    def __init__(self, workdir: str | Path, run_id: str, index: int) -> None:
        super().__init__(workdir, run_id)
        self.index = index
        self.root = shard_root(workdir, run_id)

    def register(self, **kwargs: Any) -> None:
        """Nothing: the writer registers the run."""

    def record_unsupported(self, benchmark: str, unsupported: Mapping[str, str]) -> None:
        """Nothing: the writer records the unsupported systems."""

    def scored_keys(self, benchmark: str, setting: str) -> set[tuple[str, int, str]]:
        """(system, seed, sample_id) already scored ``ok``: in any shard file of the setting, or in the store."""
        # the files first: one merged (and removed) after being listed has its rows in the store, read next
        done = {
            (str(system), int(seed), str(sample_id))
            for system, seed, sample_id, status in _key_rows(self.root / benchmark / setting)
            if status == "ok"
        }
        if self.database.is_file():
            done |= super().scored_keys(benchmark, setting)
        return done

    def write_samples(self, rows: Sequence[Mapping[str, Any]]) -> Counts:
        """Write ``samples`` rows to a new shard file (atomically); their counts."""
        by_setting: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            by_setting.setdefault((row["benchmark"], row["setting"]), []).append(self._stored(row))
        for (benchmark, setting), stored in by_setting.items():
            _write_shard_file(self.root / benchmark / setting, self.index, stored)
        ok = sum(r["status"] == "ok" for r in rows)
        return Counts(scored=ok, skipped=len(rows) - ok)

    def write_results(self, benchmark: str, rows: Sequence[Mapping[str, Any]]) -> Any:
        raise RuntimeError("a shard process does not write results: the writer computes them after the merge")


def _key_rows(folder: Path) -> list[tuple[Any, ...]]:
    """(system, seed, sample_id, status) of every row in the shard files of ``folder`` (files removed meanwhile,
    by a merge, are skipped)."""
    out: list[tuple[Any, ...]] = []
    for path in sorted(folder.glob("shard*.parquet")) if folder.is_dir() else []:
        try:
            table = pq.read_table(path, columns=["system", "seed", "sample_id", "status"])
        except FileNotFoundError:
            continue
        out += zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
    return out


def _write_shard_file(folder: Path, index: int, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` (as stored: paths relative) as the next Parquet file of shard ``index`` in ``folder``, typed by the
    store's ``samples`` schema (so the merge inserts them unchanged) and written atomically."""
    names = (SHARD_FILE.match(p.name) for p in folder.glob(f"shard{index}-*.parquet"))
    taken = [int(m["seq"]) for m in names if m and int(m["index"]) == index]
    seq = max(taken, default=0) + 1
    with duckdb.connect() as con:  # in memory: the store's casts, without the store's lock
        con.execute(f"CREATE TABLE samples ({TABLES['samples'].definition()})")
        con.register("incoming", pd.DataFrame(list(rows)))
        con.execute("INSERT INTO samples BY NAME SELECT * FROM incoming")
        table = con.sql("SELECT * FROM samples").to_arrow_table()
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return atomic_write_bytes(folder / f"shard{index}-{seq:05d}.parquet", buffer.getvalue())


def merge_shard_files(
    workdir: str | Path, database: Path, run_id: str, benchmarks: Sequence[str] | None = None
) -> dict[str, Counts]:
    """Merge the run's shard files (of ``benchmarks``, default all) into the store's ``samples``, then remove them;
    the rows new to the store per benchmark (``ok`` as scored, the rest as skipped).

    One transaction: rows replace the store's rows of the same key (run, benchmark, setting, system, seed,
    sample_id), and a key found in several files (a sample scored again after a crash) is stored once, its ``ok``
    row preferred, else the newest file's. The stored rows are counted against the distinct keys read; on any
    difference nothing is committed and no file is removed. A crash after the commit leaves files whose rows are
    already stored: merging them again changes nothing.
    """
    root = shard_root(workdir, run_id)
    folders = [root / b for b in benchmarks] if benchmarks is not None else [root]
    files = sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("shard*.parquet"))
    if not files:
        return {}
    keys = ", ".join(SAMPLE_KEY)
    listed = ", ".join(_sql_text(str(p)) for p in files)
    with connect(database) as con:
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "CREATE TEMP TABLE shard_rows AS SELECT * EXCLUDE (shard_rank, filename) FROM ("
            f"SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY status = 'ok' DESC, filename DESC) "
            f"AS shard_rank FROM read_parquet([{listed}], filename = true, union_by_name = true)) WHERE shard_rank = 1"
        )
        new = {  # before the insert: the rows the store does not hold yet
            benchmark: Counts(scored=int(ok), skipped=int(other))
            for benchmark, ok, other in con.execute(
                "SELECT benchmark, count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status <> 'ok') "
                f"FROM shard_rows ANTI JOIN samples USING ({keys}) GROUP BY benchmark"
            ).fetchall()
        }
        con.execute("INSERT OR REPLACE INTO samples BY NAME SELECT * FROM shard_rows")
        (read,) = con.execute("SELECT count(*) FROM shard_rows").fetchone()
        (stored,) = con.execute(f"SELECT count(*) FROM samples JOIN shard_rows USING ({keys})").fetchone()
        if stored != read:
            raise RuntimeError(f"merging {len(files)} shard files of run {run_id}: {stored} rows stored of {read}")
        con.execute("DROP TABLE shard_rows")
        con.execute("COMMIT")
    for path in files:
        path.unlink(missing_ok=True)
    emptied = {folder for p in files for folder in p.parents if folder.is_relative_to(root)}
    for folder in sorted(emptied, key=lambda f: len(f.parts), reverse=True):  # the deepest first
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    logger.info("merged %d sample rows of run %s from %d shard files into %s", read, run_id, len(files), database)
    return new


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- local worker processes ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WorkerCall:
    """The benchmark call a worker process repeats on its share (JSON on its command line)."""

    workdir: str
    benchmark: str
    """vist, visdial, cc3m-fid or ablation."""
    options: dict[str, Any]
    """The :class:`eval.bench.BenchOptions` fields."""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: list[Any] | None = None
    checkpoints: list[str | None] = dataclasses.field(default_factory=lambda: [None])
    metric_spec: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerCall:
        return cls(**json.loads(text))

    def log(self, index: int) -> Path:
        """Worker ``index``'s output: ``W/bench/workers/<benchmark>/worker<index>.log``."""
        return Path(self.workdir) / "bench" / "workers" / self.benchmark / f"worker{index}.log"

    def error_file(self, index: int) -> Path:
        """Where worker ``index`` leaves the gill error it stopped on (JSON), for the parent to raise."""
        return self.log(index).with_suffix(".error.json")


ERRORS: dict[str, type[GillError]] = {e.__name__: e for e in (GillError, ConfigError, InputError, MissingWeightsError)}
"""The gill errors a worker passes on to its parent by name (the parent raises the same, so the ``gill`` command
exits with the same status and message as one process would)."""


def save_worker_error(path: Path, err: GillError) -> None:
    """Record the gill error a worker stops on (:func:`run_workers` raises it again in the parent)."""
    kind = type(err).__name__ if type(err).__name__ in ERRORS else "GillError"
    record = {"kind": kind, "message": err.message, "problems": err.problems, "hint": err.hint}
    atomic_write_bytes(path, json.dumps(record).encode())


def run_workers(call: WorkerCall, count: int, device: str) -> None:
    """Run ``call`` in ``count`` local worker processes, worker k scoring shard k of ``count``, and wait for all.

    Each worker's output goes to ``W/bench/workers/<benchmark>/worker<k>.log``. On CPU each worker gets an equal
    part of the cores (``OMP_NUM_THREADS``, unless set). A worker that stopped on a gill error (bad input, missing
    weights) has it raised here, as one process would have; any other failure raises a
    :class:`gill.errors.GillError` naming the workers and their logs. Their rows so far stay in the shard files,
    merged by the next run.
    """
    env = _worker_env(count, device)
    procs: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    try:
        for index in range(count):
            log = call.log(index)
            log.parent.mkdir(parents=True, exist_ok=True)
            call.error_file(index).unlink(missing_ok=True)
            with open(log, "wb") as out:
                argv = [sys.executable, "-m", WORKER_MODULE, str(index), str(count), call.to_json()]
                procs.append((index, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env), log))
        logger.info("%s: %d worker processes scoring their shares; logs in %s", call.benchmark, count, log.parent)
        codes = [(index, proc.wait(), log) for index, proc, log in procs]
    except BaseException:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in procs:
            proc.wait()
        raise
    failed = [(index, code, log) for index, code, log in codes if code != 0]
    for index, _, _ in failed:
        saved = call.error_file(index)
        if saved.is_file():
            record = json.loads(saved.read_text())
            raise ERRORS[record["kind"]](record["message"], record["problems"], record["hint"])
    if failed:
        raise GillError(
            f"{len(failed)} of {count} benchmark workers failed",
            [f"worker {index}: exit status {code}, log {log}: {_last_line(log)}" for index, code, log in failed],
            hint="the rows they scored are kept in shard files; run the same command again to resume",
        )


def _worker_env(count: int, device: str) -> dict[str, str]:
    """The workers' environment: this one, the checkout this process imports first on the path, and on CPU an equal
    part of the cores each."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if device == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, cores() // count))
    return env


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty)"
