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
      bench/                      benchmark images and reports/
      generated/, chat/           outputs of gill generate and gill chat
      .prefect/                   Prefect task cache and results of the flows (and home/, when no profile is set)

The library (``gill/``) never derives these paths itself from a work folder in new code: runners pass it
explicit paths (or use the few library helpers listed here, which implement the same layout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from annotations.store import CANDIDATES_DIR
from flows.store import db_path
from gill.data.precompute import feature_dir
from gill.data.shards import image_split_dir
from gill.pipeline import resolve_checkpoint
from gill.retrieval import INDEX_DIR
from gill.train import runs_dir


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
        return db_path(self.root)

    @property
    def world(self) -> Path:
        """The synthetic world's folder."""
        return self.root / "world"

    def images(self, split: str) -> Path:
        """Downloaded image shards of a CC3M split."""
        return image_split_dir(split, self.root)

    def features(self, split: str) -> Path:
        """Precomputed feature shards of a CC3M split."""
        return feature_dir(split, self.root)

    @property
    def runs(self) -> Path:
        """Training runs."""
        return runs_dir(self.root)

    def run(self, run_id: str) -> Path:
        """One training run's folder."""
        return self.runs / run_id

    def checkpoint(self, checkpoint: str | os.PathLike[str] | None = None) -> Path:
        """A checkpoint folder: ``checkpoint`` when given, else the default run's ``best/`` or ``final/``."""
        return resolve_checkpoint(self.root, checkpoint)

    def run_checkpoint(self, run_id: str) -> Path:
        """The checkpoint of run ``run_id`` (its ``best/``, else ``final/``), else the default checkpoint."""
        for name in ("best", "final"):
            folder = self.run(run_id) / name
            if (folder / "adapters.safetensors").is_file():
                return folder
        return self.checkpoint()

    @property
    def candidates(self) -> Path:
        """Images of the retrieve-vs-generate judging candidates."""
        return self.root / CANDIDATES_DIR

    @property
    def bench_reports(self) -> Path:
        """Benchmark reports and figures."""
        return self.root / "bench" / "reports"

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
    def banks(self) -> Path:
        """Retrieval banks, one folder per checkpoint id."""
        return self.root / INDEX_DIR

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
