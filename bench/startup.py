"""Start-up time of the ``gill`` command against importing the model stack, measured in the same run.

Run: ``.venv/bin/python bench/startup.py [--rounds 5]`` from the repo root. Each case is a fresh interpreter, as a
user starts it; the baseline is ``python -c "import torch, transformers, diffusers"`` (the cost the command pays
when it imports the stack). ``gill`` runs through the console entry point of pyproject.toml
(``flows.command:main``) on this checkout's code. The cases alternate round by round, so load from other work on
a shared machine hits them alike; the table gives each one's median and best wall time and its median as a ratio to
the baseline's. Goal: ``gill --help`` and ``gill annotate --help`` far below 1 (they import no stack); ``gill
train --help`` imports the stack (its parser needs the training options, which live with it) and more: the model
classes that ``import transformers, diffusers`` leave to be loaded lazily, the tiny zoo, the stages.

Measured on 2 shared CPU cores (load average ~1.1 from other work), 5 rounds. Before the lazy dispatch of
:mod:`flows.command` every command imported every command module: the same script on that code (3 rounds, stack
6.76 s) gave ``gill --help`` 12.19 s (1.80), ``gill annotate --help`` 11.09 s (1.64), ``gill train --help``
10.08 s (1.49). Now:

=========================  ========  ======  ==========
case                       median s  best s  / baseline
=========================  ========  ======  ==========
python -c pass             0.04      0.03    0.01
import the stack           5.80      5.47    1.00
gill --help                0.08      0.06    0.01
gill annotate --help       1.30      1.24    0.22
gill train --help          10.05     9.41    1.73
=========================  ========  ======  ==========

``--device`` and ``--dtype`` are accepted like every bench's, so one command line runs every bench (a CUDA request
on a machine without one exits 2), but they do not apply: start-up builds no model and touches no device.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from device import add_device_arguments, resolve_device

ROOT = Path(__file__).resolve().parents[1]
ENTRY = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]["gill"]
GILL = "import importlib, sys; m, _, f = {!r}.partition(':'); sys.exit(getattr(importlib.import_module(m), f)())"

BASELINE = "import the stack"
CASES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    BASELINE: ["-c", "import torch, transformers, diffusers"],
    "gill --help": ["-c", GILL.format(ENTRY), "--help"],
    "gill annotate --help": ["-c", GILL.format(ENTRY), "annotate", "--help"],
    "gill train --help": ["-c", GILL.format(ENTRY), "train", "--help"],
}


def wall_seconds(args: list[str]) -> float:
    """Wall time of one fresh ``python ARGS`` (its output discarded; a failure is an error)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds after a warm-up round (default 5)")
    add_device_arguments(parser)
    args = parser.parse_args()
    dev = resolve_device(args)
    print(f"device {dev.describe()} requested; start-up involves no model: --device/--dtype do not apply")
    rounds = args.rounds
    for args in CASES.values():  # warm-up: the file cache, .pyc files
        wall_seconds(args)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, args in CASES.items():
            times[name].append(wall_seconds(args))
    baseline = statistics.median(times[BASELINE])
    print(f"{'case':26s} {'median s':>9s} {'best s':>7s} {'/ baseline':>11s}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:26s} {median:9.2f} {min(seconds):7.2f} {median / baseline:11.2f}")


if __name__ == "__main__":
    main()
