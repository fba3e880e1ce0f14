"""The full ``gill`` parser: every command registered, every command module imported (so the model stack too).

For tests (``python -m flows.command`` and ``torchrun -m flows.command train ...`` run the lazy entry point). The
console command ``gill`` (``flows.command:main``, the package's entry point) builds only the part of this parser that it
runs, from the same registrars, and runs it the same way (:func:`flows.command.execute`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from flows.command import execute, top_parser
from flows.command.annotate_work import add_annotate_parsers
from flows.command.bench import add_bench_parsers
from flows.command.data import add_data_parsers
from flows.command.db import add_db_parsers
from flows.command.decision import add_decision_parsers
from flows.command.demo import add_demo_parser
from flows.command.inference import add_inference_parsers
from flows.command.models import add_model_parsers
from flows.command.train import add_train_parser
from flows.command.ui import add_ui_parser
from gill.offline import configure_environment

REGISTRARS = (
    add_model_parsers,
    add_data_parsers,
    add_db_parsers,
    add_train_parser,
    add_inference_parsers,
    add_ui_parser,
    add_annotate_parsers,
    add_decision_parsers,
    add_bench_parsers,
    add_demo_parser,
)
"""Every command's registrar, in ``gill --help`` order (``annotate`` with the commands it defers)."""


def build_parser() -> argparse.ArgumentParser:
    """The full ``gill`` argument parser."""
    parser, groups = top_parser()
    for register in REGISTRARS:
        register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``gill ARGS`` with the full parser (a front end: it sets gill's offline Hub defaults for its own process,
    :func:`gill.offline.configure_environment`; importing the library does not)."""
    configure_environment()
    return execute(build_parser().parse_args(argv))
