"""The model configuration every command that touches models takes: ``--preset``/``--config`` plus per-backbone
overrides (the fields of :class:`flows.options.ModelChoice`)."""

from __future__ import annotations

import argparse

from flows.options import ModelChoice, add_options, options_from
from gill.config import GILLConfig


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset``/``--config`` plus per-backbone overrides (the fields of :class:`flows.options.ModelChoice`)."""
    add_options(parser.add_argument_group("model configuration"), ModelChoice, dests={"config_path": "config"})


def resolve_config(args: argparse.Namespace, build: bool = True) -> GILLConfig:
    """The config a command runs with: file or preset, then backbone overrides."""
    return options_from(ModelChoice, args, dests={"config_path": "config"}).gill_config(build=build)
