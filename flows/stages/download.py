"""Stage ``download``: a CC3M url list into webdataset shards with img2dataset (paper section 4's training data),
with the yield (one row per shard, one per failed url) in the store. The process manager around img2dataset is
:mod:`flows.stages.download_manager`."""

from __future__ import annotations

import os

from flows.stages.download_manager import DownloadOptions, DownloadReport, download_split
from flows.store import record_download
from flows.workdir import Workdir

__all__ = ["DownloadOptions", "DownloadReport", "run"]


def run(
    workdir: Workdir, split: str, urls: str | os.PathLike[str], options: DownloadOptions, progress: bool
) -> DownloadReport:
    """img2dataset over ``urls`` into ``<workdir>/data/cc3m/<split>`` (resuming completed shards); the yield
    (shard and failure rows) replaces the split's rows in the project store."""
    report = download_split(urls, split, workdir.root, options, progress=progress)
    record_download(workdir.database, split, report.shard_rows(), report.failure_rows())
    return report
