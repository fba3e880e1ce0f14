"""Flow ``download-cc3m``: a CC3M url list -> webdataset shards, with the yield in DuckDB and an artifact.

Run it from Python (``download_cc3m_flow(DownloadParams(urls=..., split="train", workdir=...))``), or the same
work without Prefect with ``gill data download``. It runs the full flow's download task (retried on failure).
"""

from __future__ import annotations

from prefect import flow

from flows.params import DownloadParams
from flows.tasks import download_task, file_digest


@flow(name="download-cc3m", log_prints=True)
def download_cc3m_flow(params: DownloadParams) -> dict:
    """Download one CC3M split and publish its yield (paper section 4: CC3M training data)."""
    options = params.model_dump(exclude={"urls", "split", "workdir"})
    return download_task(params.workdir, params.split, params.urls, file_digest(params.urls), options)
