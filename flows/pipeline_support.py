"""Plain helpers of the ``gill`` flow: stage selection and progress lines, data sources, output locations."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flows.params import STAGES, PipelineParams
from flows.workdir import Workdir

logger = logging.getLogger("gill.pipeline")


class StageLog:
    """Which stages run, with a numbered progress line as each starts and ends (printed into the flow's log)."""

    def __init__(self, selected: list[str]) -> None:
        self.selected = [s for s in STAGES if s in selected]
        self.outputs: dict[str, Any] = {}
        self._start = time.perf_counter()

    def wants(self, stage: str, selected: bool = False) -> bool:
        """Whether ``stage`` runs (chosen in the parameters, or ``selected`` by the flow); prints its start line."""
        run = stage in self.selected or selected
        position = f"[{self.selected.index(stage) + 1}/{len(self.selected)}]" if stage in self.selected else "[+]"
        print(f"{position} {stage}: {'running' if run else 'skipped'} ({time.perf_counter() - self._start:.0f} s)")
        return run

    def done(self, name: str, outputs: Any) -> Any:
        """Record and print what a stage produced."""
        self.outputs[name] = outputs
        shown = outputs
        if isinstance(outputs, dict):
            shown = {k: v for k, v in outputs.items() if k not in ("curve", "report", "root")}
        print(f"    {name} done: {shown}")
        return outputs


def data_sources(params: PipelineParams) -> dict[str, str] | None:
    """The user's data files, or None when every source is left empty (then the synthetic world is used).

    Raises:
        ValueError: some but not all sources are given (naming the missing ones).
    """
    given = {
        "cc3m_train": params.cc3m_train_urls,
        "cc3m_val": params.cc3m_val_urls,
        "vist_sis_json": params.vist_sis_json,
        "vist_images": params.vist_images,
        "visdial_json": params.visdial_json,
        "visdial_images": params.visdial_images,
    }
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"give every data source or none (none: the synthetic world); missing: {', '.join(missing)}")
    problems = [f"{k}: {v} does not exist" for k, v in given.items() if not Path(v).exists()]
    if problems:
        raise ValueError("data sources not found: " + "; ".join(problems))
    return {k: str(v) for k, v in given.items()}


def figures_written(reports: Path) -> str:
    """The report's figures as a shell pattern naming those written (a PDF lies beside each PNG; the qualitative
    grids are listed apart), so the list promises no figure a run did not make (the mapper ablation is optional)."""
    names = sorted(p.stem for p in reports.glob("*.png") if not p.name.startswith("grid_"))
    if len(names) == 1:
        return str(reports / f"{names[0]}.png")
    return str(reports / ("{" + ",".join(names) + "}.png" if names else "*.png"))


def locations(workdir: Path, checkpoint: Path | None) -> dict[str, str]:
    """Where every output of the pipeline lives."""
    wd = Workdir.at(workdir)
    rows = {
        "database (query with SQL)": wd.database,
        "image shards": wd.data,
        "precomputed features": wd.feature_root,
        "training runs": wd.runs,
        "checkpoint": checkpoint,
        "retrieval banks": wd.banks,
        "judging candidates and votes": wd.annotations,
        "judge them (people)": f"gill annotate add-judge NAME --workdir {workdir}, then gill annotate serve --workdir "
        f"{workdir} (or export --format html-bundle / label-studio)",
        "benchmark images": wd.bench,
        "report (open in a browser: tables, figures, every sample)": wd.html_report / "index.html",
        "figures (PNG and PDF)": figures_written(wd.bench_reports),
        "qualitative grids (context -> ground truth / SD / GILL)": wd.bench_reports / "grid_*.png",
        "claims table": f"gill report --workdir {workdir} --claims (DuckDB view claims)",
        "stage cache": wd.prefect,
    }
    return {k: str(v) for k, v in rows.items() if v is not None}
