"""Stage ``index``: the retrieval bank, the training images embedded with the checkpoint's retrieval head (paper
section 3.2, the image side of retrieval)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.workdir import Workdir
from gill.errors import InputError
from gill.retrieval import BankInfo, build_bank, checkpoint_id


def run(
    workdir: Workdir,
    checkpoint: Path | None = None,
    progress: bool = False,
    splits: Sequence[str] = ("train",),
    **bank_options: Any,
) -> BankInfo:
    """Build (or reuse, when up to date) the bank of ``checkpoint`` (default: the work folder's checkpoint) over
    the images of ``splits``, in ``index/<checkpoint id>``; ``bank_options`` are :func:`gill.retrieval.build_bank`'s
    (approximate, batch_size, nlist)."""
    checkpoint = workdir.checkpoint(checkpoint)
    folders = [workdir.split(name) for name in ([splits] if isinstance(splits, str) else splits)]
    return build_bank(
        folders,
        checkpoint,
        workdir.bank(checkpoint_id(checkpoint)),
        portable_root=workdir.root,
        progress=progress,
        **bank_options,
    )


def existing_bank(workdir: Workdir, checkpoint: str | os.PathLike[str]) -> Path | None:
    """The bank folder of ``checkpoint`` when built, else None.

    Raises:
        InputError: the work folder holds banks, none of them built by this checkpoint (retrieving with another
            checkpoint's rows would be wrong, so this is refused rather than silently generating).
    """
    ckpt_id = checkpoint_id(checkpoint)
    path = workdir.bank(ckpt_id)
    if path.is_dir():
        return path
    folders = workdir.banks.iterdir() if workdir.banks.is_dir() else []
    others = sorted(p.name for p in folders if p.is_dir() and not p.name.startswith("."))  # not in-progress builds
    if others:
        raise InputError(
            f"the retrieval banks under {str(workdir.banks)!r} were built by other checkpoints",
            [f"banks: {', '.join(others)}", f"checkpoint {str(checkpoint)!r} has id {ckpt_id}"],
            hint=f"build one for this checkpoint: gill index build --workdir {workdir.root} --checkpoint {checkpoint}",
        )
    return None
