"""Recording of benchmark rows: the benchmarks' only access to the workdir's DuckDB file.

The last piece of a benchmark (:mod:`eval.bench` produces the images, :mod:`eval.bench_scoring` scores them):
:class:`BenchRecorder` registers the run (``runs``), records unsupported systems, writes ``samples`` rows every few
samples and the ``results`` of a benchmark, and reads back what an earlier call already scored (so a re-run resumes).
Writes go through :func:`flows.store.replace_rows` (one short transaction per write, retrying on the
single-writer lock).

Paths inside the work folder are stored relative to it (``generated_path``, ``reference_path``, ``context_paths``,
``runs.checkpoint``) and resolved against it when read back (:mod:`gill.utils.paths`); paths outside it, e.g. a
user's VIST image folder, stay absolute.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.store import db_path, ensure_database, query, replace_rows
from gill.utils.paths import resolve_stored, to_stored

PATH_COLUMNS = ("generated_path", "reference_path")
"""``samples`` columns holding one path; ``context_paths`` holds a JSON list of them."""


@dataclass
class Counts:
    """Sample rows scored, skipped and resumed (already scored) in one call."""

    scored: int = 0
    skipped: int = 0
    resumed: int = 0

    def add(self, other: Counts) -> None:
        self.scored += other.scored
        self.skipped += other.skipped
        self.resumed += other.resumed

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.scored + other.scored, self.skipped + other.skipped, self.resumed + other.resumed)


class BenchRecorder:
    """The ``runs``, ``unsupported_systems``, ``samples`` and ``results`` rows of one benchmark run."""

    def __init__(self, workdir: str | Path, run_id: str) -> None:
        self.workdir = Path(workdir)
        self.run_id = run_id
        self.database = db_path(self.workdir)

    # -- runs -----------------------------------------------------------------------------------------------------

    def register(self, *, checkpoint: Path, preset: str, git_sha: str | None, config: dict[str, Any]) -> None:
        """Create the database if needed and (re)write the run's ``runs`` row, keeping its first start time."""
        ensure_database(self.database)
        existing = query(self.database, "SELECT started_at FROM runs WHERE run_id = ?", [self.run_id])
        started = existing["started_at"].iloc[0] if len(existing) else dt.datetime.now(dt.UTC).replace(tzinfo=None)
        row = {
            "run_id": self.run_id,
            "started_at": started,
            "git_sha": git_sha,
            "preset": preset,
            "checkpoint": to_stored(checkpoint, self.workdir),
            "config": json.dumps(config, sort_keys=True),
        }
        replace_rows(self.database, "runs", [row])

    def record_unsupported(self, benchmark: str, unsupported: Mapping[str, str]) -> None:
        """One ``unsupported_systems`` row per system not run, with the reason."""
        rows = [
            {"run_id": self.run_id, "benchmark": benchmark, "system": s, "reason": r} for s, r in unsupported.items()
        ]
        replace_rows(self.database, "unsupported_systems", rows)

    # -- samples --------------------------------------------------------------------------------------------------

    def scored_keys(self, benchmark: str, setting: str) -> set[tuple[str, int, str]]:
        """(system, seed, sample_id) of every sample of one setting already scored ``ok``."""
        rows = query(
            self.database,
            "SELECT system, seed, sample_id FROM samples WHERE run_id = ? AND benchmark = ? "
            "AND setting = ? AND status = 'ok'",
            [self.run_id, benchmark, setting],
        )
        return {(r.system, int(r.seed), r.sample_id) for r in rows.itertuples()}

    def scored_pools(self, benchmark: str, setting: str) -> Any:
        """``system``, ``sample_id`` and ``pool_size`` of the setting's ``ok`` retrieval rows (a DataFrame)."""
        return query(
            self.database,
            "SELECT system, sample_id, pool_size FROM samples WHERE run_id = ? AND "
            "benchmark = ? AND setting = ? AND status = 'ok'",
            [self.run_id, benchmark, setting],
        )

    def write_samples(self, rows: Sequence[Mapping[str, Any]]) -> Counts:
        """Write ``samples`` rows (paths given as paths; ``context_paths`` as a sequence); their counts."""
        if rows:
            replace_rows(self.database, "samples", [self._stored(r) for r in rows])
        ok = sum(r["status"] == "ok" for r in rows)
        return Counts(scored=ok, skipped=len(rows) - ok)

    def _stored(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for column in PATH_COLUMNS:
            if column in out:
                out[column] = to_stored(out[column], self.workdir) if out[column] else None
        if "context_paths" in out:
            out["context_paths"] = json.dumps([to_stored(p, self.workdir) if p else None for p in out["context_paths"]])
        return out

    def scored_images(self, benchmark: str, setting: str) -> Any:
        """``system``, ``seed``, ``sample_id`` and the resolved ``generated_path`` and ``reference_path`` of the
        setting's ``ok`` rows, by sample id (a DataFrame)."""
        frame = query(
            self.database,
            "SELECT system, seed, sample_id, generated_path, reference_path FROM samples "
            "WHERE run_id = ? AND benchmark = ? AND setting = ? AND status = 'ok' ORDER BY sample_id",
            [self.run_id, benchmark, setting],
        )
        for column in PATH_COLUMNS:
            frame[column] = [
                resolve_stored(v, self.workdir) if isinstance(v, str) and v else None for v in frame[column]
            ]
        return frame

    def samples(self, benchmark: str) -> Any:
        """Every ``samples`` row of one benchmark of the run (a DataFrame; paths as stored)."""
        return query(
            self.database, "SELECT * FROM samples WHERE run_id = ? AND benchmark = ?", [self.run_id, benchmark]
        )

    # -- results --------------------------------------------------------------------------------------------------

    def write_results(self, benchmark: str, rows: Sequence[Mapping[str, Any]]) -> Any:
        """Replace the benchmark's ``results`` rows of the run by ``rows``; return them as stored (a DataFrame)."""
        replace_rows(self.database, "results", rows, scope={"run_id": self.run_id, "benchmark": benchmark})
        return query(
            self.database,
            "SELECT * FROM results WHERE run_id = ? AND benchmark = ? ORDER BY setting, system, metric",
            [self.run_id, benchmark],
        )
