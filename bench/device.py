"""The device and dtype every bench script accepts: ``--device cpu|cuda[:N]`` and ``--dtype fp32|fp16|bf16``.

Run from the repo root (``python bench/<name>.py --device cuda --dtype fp16``). A request that this machine cannot
honour (CUDA asked for without a CUDA build or GPU, fp16 on the CPU) exits with status 2 and one line naming the
option, what was wrong and how to fix it, before any model is built.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceChoice:
    """Where a bench runs and in which floating-point type."""

    device: torch.device
    dtype: torch.dtype
    dtype_name: str

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        """Wait for queued GPU work, so a wall-clock time covers it (no-op on the CPU)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_gib(self) -> float | None:
        """Peak GPU memory allocated by torch since the last reset (None on the CPU)."""
        if not self.is_cuda:
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        return f"{self.device} ({name}), {self.dtype_name}"


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` and ``--dtype`` to a bench's parser."""
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=sorted(DTYPES),
        help="floating-point type of the models (default fp32; fp16 needs CUDA)",
    )


def device_problems(device: str, dtype: str) -> list[str]:
    """What is wrong with ``--device device --dtype dtype`` on this machine (empty: fine)."""
    problems = []
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return [f"--device {device!r}: not a torch device; use cpu, cuda or cuda:N"]
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda is not None
            why = "no CUDA GPU is visible" if built else "this torch build has no CUDA support"
            problems.append(f"--device {device}: {why}; run on a GPU machine or use --device cpu")
        elif parsed.index is not None and parsed.index >= torch.cuda.device_count():
            problems.append(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    elif parsed.type != "cpu":
        problems.append(f"--device {device}: only cpu and cuda are supported by the benches")
    if dtype not in DTYPES:
        problems.append(f"--dtype {dtype!r}: use one of {', '.join(sorted(DTYPES))}")
    elif dtype == "fp16" and parsed.type == "cpu":
        problems.append("--dtype fp16 on the CPU: use fp32 or bf16 there, or --device cuda")
    return problems


def resolve_device(args: argparse.Namespace) -> DeviceChoice:
    """The parsed ``--device``/``--dtype``; exits with status 2 naming every problem when they cannot be honoured."""
    problems = device_problems(args.device, args.dtype)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return DeviceChoice(device=torch.device(args.device), dtype=DTYPES[args.dtype], dtype_name=args.dtype)
