"""Flow ``download-cc3m``: a CC3M url list -> webdataset shards, with the yield in DuckDB and an artifact.

Run it from Python (``download_cc3m_flow(DownloadParams(urls=..., split="train", workdir=...))``), or the same
work without Prefect with ``gill data download``.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.params import DownloadParams
from flows.stages.download import DownloadOptions, DownloadReport, download_split


@task(task_run_name="download cc3m {params.split}")
def download_task(params: DownloadParams) -> DownloadReport:
    """Download and shard one split (img2dataset; resumes completed shards)."""
    options = DownloadOptions(**params.model_dump(exclude={"urls", "split", "workdir"}))
    return download_split(params.urls, params.split, params.workdir, options, progress=False)


@task(task_run_name="record yield {report.split}")
def record_yield_task(params: DownloadParams, report: DownloadReport) -> str:
    """Write the shard and failure rows into <workdir>/gill.duckdb; returns the database path."""
    from eval.db import db_path, record_download

    record_download(db_path(params.workdir), report.split, report.shard_rows(), report.failure_rows())
    return str(db_path(params.workdir))


@flow(name="download-cc3m", log_prints=True)
def download_cc3m_flow(params: DownloadParams) -> dict:
    """Download one CC3M split and publish its yield (paper section 4: CC3M training data)."""
    report = download_task(params)
    database = record_yield_task(params, report)
    create_table_artifact(
        key=f"cc3m-yield-{params.split}",
        table=[{**row} for row in report.shard_rows()],
        description=report.summary(),
    )
    print(report.summary())
    return {"split": report.split, "total": report.total, "successes": report.successes, "database": database}
