"""The work folder's layout, in one place: every runner finds its inputs and outputs through a :class:`Workdir`.

A work folder holds everything one pipeline produces::

    <root>/
      gill.duckdb                 the project store (flows.store): every stage's rows, queried with SQL
      world/                      the synthetic shapes world (embedded default data)
      data/cc3m/<split>/          downloaded webdataset shards (img2dataset)
      features/cc3m/<split>/      precomputed frozen targets, one folder per shard
      runs/<run_id>/{best,final}/ training runs and their checkpoints (``runs/DEFAULT`` names the default run)
      index/<checkpoint id>/      retrieval banks
      annotations/                judging: candidates/ (images), judging.sqlite (the judging store)
      bench/                      benchmark images and reports/ (reports/html/index.html: the web page)
      generated/, chat/           outputs of gill generate and gill chat
      .prefect/                   Prefect task cache and results of the flows (and home/, when no profile is set)

The library (``gill/``) knows nothing of this layout: runners pass it explicit folders (a split's
:class:`~gill.data.shards.SplitFolders`, a runs folder, a bank folder) and the work folder as the
``portable_root`` under which paths are recorded relative, so the whole folder can be moved or copied.

This module imports no model code (the judging commands use it and start fast); what needs it lives with its
stage: :func:`flows.stages.index.existing_bank`, :func:`flows.stages.train.resumable_run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from annotations.store import CANDIDATES_DIR
from gill.data.shards import SplitFolders
from gill.errors import InputError
from gill.utils.io import atomic_write_text

DATABASE_FILE = "gill.duckdb"
"""The project store's file (:mod:`flows.store`)."""
DATASET = "cc3m"
"""The dataset whose shards the work folder holds (``data/cc3m``, ``features/cc3m``)."""
DEFAULT_RUN_FILE = "DEFAULT"
"""``runs/DEFAULT`` names the run whose checkpoint commands use when none is given."""
CHECKPOINT_NAMES = ("best", "final")
"""A run's exported checkpoints, in order of preference."""


@dataclass(frozen=True)
class Workdir:
    """A work folder (absolute) and where each stage's files live in it."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> Workdir:
        """The work folder at ``path`` (made absolute; not created)."""
        return cls(Path(path).expanduser().resolve())

    @property
    def database(self) -> Path:
        """The project store, ``gill.duckdb``."""
        return self.root / DATABASE_FILE

    @property
    def world(self) -> Path:
        """The synthetic world's folder."""
        return self.root / "world"

    def images(self, split: str) -> Path:
        """Downloaded image shards of a CC3M split (as img2dataset writes them)."""
        return self.root / "data" / DATASET / split

    def features(self, split: str) -> Path:
        """Precomputed feature shards of a CC3M split (one folder per image shard)."""
        return self.feature_root / DATASET / split

    def split(self, name: str) -> SplitFolders:
        """A split's image and feature folders, as the library takes them."""
        return SplitFolders(name=name, images=self.images(name), features=self.features(name))

    # -- training runs --

    @property
    def runs(self) -> Path:
        """Training runs."""
        return self.root / "runs"

    def run(self, run_id: str) -> Path:
        """One training run's folder."""
        return self.runs / run_id

    def existing_runs(self) -> list[str]:
        """Every run folder, sorted (hidden folders excluded)."""
        folders = self.runs.iterdir() if self.runs.is_dir() else []
        return sorted(p.name for p in folders if p.is_dir() and not p.name.startswith("."))

    def default_run(self) -> str | None:
        """The run named by ``runs/DEFAULT``, or None."""
        path = self.runs / DEFAULT_RUN_FILE
        return path.read_text(encoding="utf-8").strip() or None if path.is_file() else None

    def mark_default_run(self, run_id: str) -> None:
        """Make ``run_id`` the default run (``gill train`` and the pipeline's main run do; ablations don't)."""
        atomic_write_text(self.runs / DEFAULT_RUN_FILE, run_id + "\n")

    # -- checkpoints --

    def checkpoint(self, checkpoint: str | os.PathLike[str] | None = None) -> Path:
        """The checkpoint to use: ``checkpoint`` if given, else the default run's (``runs/DEFAULT``, written by
        ``gill train`` and the pipeline's main run), else the newest run's ``best/`` (or ``final/``)."""
        if checkpoint is not None:
            path = Path(checkpoint)
            if not (path / "config.json").is_file():
                hint = "pass a folder written by gill train (runs/<id>/best) or gill import-official"
                raise InputError(f"{str(path)!r} is not a GILL checkpoint (no config.json)", [], hint=hint)
            return path
        named = self.default_run()
        for name in CHECKPOINT_NAMES if named else ():
            if (self.run(named) / name / "config.json").is_file():
                return self.run(named) / name
        candidates = []
        for run in sorted(p for p in self.runs.iterdir() if p.is_dir()) if self.runs.is_dir() else []:
            for name in CHECKPOINT_NAMES:
                if (run / name / "config.json").is_file():
                    candidates.append((run.stat().st_mtime, run / name))
                    break
        if not candidates:
            raise InputError(
                f"no trained checkpoint under {str(self.runs)!r}",
                [],
                hint="run `gill train --workdir W` first, or pass --checkpoint DIR",
            )
        return max(candidates)[1]

    def run_checkpoint(self, run_id: str) -> Path:
        """The checkpoint of run ``run_id`` (its ``best/``, else ``final/``), else the default checkpoint."""
        for name in CHECKPOINT_NAMES:
            folder = self.run(run_id) / name
            if (folder / "adapters.safetensors").is_file():
                return folder
        return self.checkpoint()

    # -- retrieval banks --

    @property
    def banks(self) -> Path:
        """Retrieval banks, one folder per checkpoint id (:func:`gill.retrieval.bank_dir`)."""
        return self.root / "index"

    def bank(self, checkpoint_id: str) -> Path:
        """The bank folder of the checkpoint with id ``checkpoint_id`` (:func:`gill.retrieval.checkpoint_id`)."""
        return self.banks / checkpoint_id

    @property
    def candidates(self) -> Path:
        """Images of the retrieve-vs-generate judging candidates."""
        return self.root / CANDIDATES_DIR

    @property
    def bench_reports(self) -> Path:
        """Benchmark reports and figures."""
        return self.root / "bench" / "reports"

    @property
    def html_report(self) -> Path:
        """The static web page of the latest benchmark report (``index.html``, its images and data)."""
        return self.bench_reports / "html"

    @property
    def samples(self) -> Path:
        """Images of the demo's inference stage."""
        return self.root / "samples"

    @property
    def demo_report(self) -> Path:
        """The stage-by-stage demo's report (``gill demo``)."""
        return self.root / "demo_report.json"

    @property
    def data(self) -> Path:
        """Every downloaded dataset."""
        return self.root / "data"

    @property
    def feature_root(self) -> Path:
        """Every precomputed feature shard."""
        return self.root / "features"

    @property
    def annotations(self) -> Path:
        """Judging: candidates, the judging store, exports."""
        return self.root / "annotations"

    @property
    def bench(self) -> Path:
        """Benchmark images (one folder per benchmark run) and reports."""
        return self.root / "bench"

    @property
    def prefect(self) -> Path:
        """The flows' task cache and results, and the work-folder-local Prefect home (``.prefect/home``)."""
        return self.root / ".prefect"

    def outputs(self, kind: str, stamp: str) -> Path:
        """A folder for one ``gill generate`` (kind ``generated``) or ``gill chat`` (``chat``) session."""
        return self.root / kind / stamp
