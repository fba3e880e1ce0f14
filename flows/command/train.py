"""``gill train``: the GILL adapters on precomputed targets (the train stage's runner)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.command import add_command
from flows.command.config_args import add_config_args, resolve_config
from flows.options import add_options, options_from
from flows.stages import train as train_stage
from flows.stages.train import TrainOptions, TrainOverrides
from flows.workdir import Workdir


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_train(args: argparse.Namespace) -> int:
    """Train the adapters on precomputed targets; metrics go to <workdir>/gill.duckdb, the training curves to
    <run>/loss_curve.png and .pdf."""
    overrides = options_from(TrainOverrides, args).as_dict()
    options = options_from(TrainOptions, args, overrides=overrides)
    outcome = train_stage.run(Workdir.at(args.workdir), resolve_config(args), options)
    result, curve = outcome.result, outcome.loss_curve
    if curve is None:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    last = result.history[-1] if result.history else {}
    _out(f"run {result.run_id}: {result.steps} steps, final loss {last.get('loss', float('nan')):.4f}")
    if result.validations:
        _out(f"best val text-to-image R@1: {result.best_t2i_r1:.3f} (checkpoint {result.run_dir / 'best'})")
    _out(f"training curves: {curve} (and {curve.with_suffix('.pdf').name})")
    _out(f'metrics: gill db query --workdir {args.workdir} "SELECT * FROM train_metrics"')
    return 0


def add_train_parser(groups: argparse._SubParsersAction) -> None:
    """Register ``train`` on the top-level ``gill`` parser."""
    p = add_command(groups, "train")
    add_config_args(p)
    p.add_argument("--workdir", type=Path, required=True, help="work folder with features/cc3m/{train,val}")
    add_options(p, TrainOverrides)
    add_options(p, TrainOptions, include=("run_id", "device"))
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run (--run-id, or the latest one); an error listing the runs when it has no checkpoint",
    )
    p.set_defaults(func=cmd_train)
