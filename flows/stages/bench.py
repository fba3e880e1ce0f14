"""Stage ``bench``: the paper's benchmarks (VIST Table 1, VisDial Table 2, CC3M FID, the mapper ablation Table 3)
scored into the ``samples`` and ``results`` tables; each resumes at its first unscored sample."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.bench import BenchOptions, BenchSummary, run_cc3m_fid, run_visdial, run_vist
from flows.workdir import Workdir

BENCHMARKS = ("vist", "visdial", "cc3m-fid")


def run(
    workdir: Workdir,
    benchmark: str,
    *,
    checkpoint: Path | None,
    data: Mapping[str, Any],
    options: BenchOptions,
    settings: Sequence[Any] | None = None,
    metric_spec: Any = None,
) -> list[BenchSummary]:
    """One benchmark. ``data`` names its files (vist: ``sis_json``, ``images``; visdial: ``dialogs_json``,
    ``images``; cc3m-fid: optionally ``split``, the work folder's shards it reads, default val). ``settings`` are
    VIST settings or VisDial rounds (default: all)."""
    common: dict[str, Any] = {"checkpoint": checkpoint, "options": options, "metric_spec": metric_spec}
    if benchmark == "vist":
        chosen = {"settings": settings} if settings is not None else {}
        return run_vist(workdir.root, data["sis_json"], data["images"], **chosen, **common)
    if benchmark == "visdial":
        chosen = {"rounds": settings} if settings is not None else {}
        return run_visdial(workdir.root, data["dialogs_json"], data["images"], **chosen, **common)
    if benchmark == "cc3m-fid":
        return [run_cc3m_fid(workdir.root, split=data.get("split", "val"), **common)]
    raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
