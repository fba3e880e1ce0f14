"""``gill demo``: every stage that exists so far on the embedded default (:func:`flows.demo.run_demo`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.command import add_command
from flows.command.config_args import add_config_args, resolve_config
from flows.demo import run_demo


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every stage that exists so far on the embedded default and print a summary."""

    report = run_demo(args.workdir, resolve_config(args, build=False), seed=args.seed)
    _out(report.render())
    return 0


def add_demo_parser(groups: argparse._SubParsersAction) -> None:
    """Register ``demo`` on the top-level ``gill`` parser."""
    p = add_command(groups, "demo")
    add_config_args(p)
    p.add_argument("--workdir", type=Path, default=Path("work/demo"), help="where outputs go (default work/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
