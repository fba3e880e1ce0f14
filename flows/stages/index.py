"""Stage ``index``: the retrieval bank, the training images embedded with the checkpoint's retrieval head (paper
section 3.2, the image side of retrieval)."""

from __future__ import annotations

from pathlib import Path

from flows.workdir import Workdir
from gill.retrieval import BankInfo, build_bank


def run(workdir: Workdir, checkpoint: Path | None = None, progress: bool = False, **bank_options) -> BankInfo:
    """Build (or reuse, when up to date) the bank of ``checkpoint`` (default: the work folder's checkpoint);
    ``bank_options`` are :func:`gill.retrieval.build_bank`'s (splits, approximate, batch_size, nlist)."""
    return build_bank(workdir.root, workdir.checkpoint(checkpoint), progress=progress, **bank_options)
