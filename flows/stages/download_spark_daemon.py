"""Spark's Python daemon for the download's local-mode session, started without torch.

Spark forks every Python worker from one daemon process; with ``spark.python.daemon.module`` set to this module
(``local`` sessions of :mod:`flows.stages.download_spark`) that daemon is pyspark's own, except that ``import torch``
fails fast in it and in every worker forked from it. webdataset imports torch only for optional DataLoader interop
and img2dataset's tar writer never uses it, as in img2dataset's multiprocessing workers
(``download_manager._hide_torch``): each worker then starts in about half the time and uses about 200 MB instead of
about 800 MB (``import img2dataset.downloader, img2dataset.writer`` measured with /usr/bin/time).
"""

import sys

if __name__ == "__main__":
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    from pyspark import daemon

    daemon.manager()
