"""Check a ``--device`` string before any model is built, so a typo or a missing GPU is a plain error."""

from __future__ import annotations

import torch

from gill.errors import InputError


def check_device(device: str, what: str = "--device") -> torch.device:
    """The torch device named by ``device``; an :class:`~gill.errors.InputError` when it is not a device or is not
    available on this machine (a CUDA index past the GPUs, ``cuda`` without a GPU, ``mps`` off macOS)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(
            f"{what} {device!r} is not a torch device",
            [str(err).splitlines()[0][:200]],
            hint="use cpu, cuda, cuda:N or mps",
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"{what} {device!r}: CUDA is not available on this machine",
                [],
                hint="use --device cpu, or run on a machine with an NVIDIA GPU and driver",
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InputError(f"{what} {device!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}", [])
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(
            f"{what} {device!r}: Apple's MPS backend is not available on this machine", [], hint="use --device cpu"
        )
    return parsed
