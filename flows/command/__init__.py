"""The ``gill`` command (a front end: every subcommand calls a stage runner or a judging function).

:func:`main` is the console entry point (``flows.command:main``). It imports only the command it runs:

1. it sets gill's offline-friendly Hugging Face defaults for this process
   (:func:`gill.offline.configure_environment`) before anything imports the model stack, because
   ``huggingface_hub`` reads some of them when it is imported;
2. a light parser knows each command only by its name and one-line help (:data:`COMMANDS`): ``gill --help`` and a
   mistyped command stop there;
3. it imports the module that registers the chosen command (its *registrar*, ``module:function``) and parses
   again with that command's real parser. A module may itself leave some of its commands to a heavier module
   (:func:`defer`): ``gill annotate status`` imports the judging room, ``gill annotate build`` the model stack;
4. :func:`execute` runs the handler: bad input and missing weights are plain messages (no traceback) and exit
   non-zero, 2 for invalid input or config, 3 for missing model weights.

Run ``gill --help`` for the list; ``gill <group> <command> --help`` for details. :mod:`flows.command.parser` holds
the full parser, every command module imported (for tests and ``python -m flows.command.parser``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from gill.errors import GillError
from gill.offline import configure_environment

DESCRIPTION = "GILL: train, reproduce and compare LLM-to-image models."


class Command(NamedTuple):
    """A top-level command of ``gill``."""

    help: str
    """Its line in ``gill --help``."""
    registrar: str
    """``module:function`` registering it on the top-level subparsers (``function(groups)``); the module is
    imported only when the command runs."""


COMMANDS: dict[str, Command] = {
    "models": Command("backbones: build the tiny zoo, check availability", "flows.command.models:add_model_parsers"),
    "config": Command("show configs and presets", "flows.command.models:add_model_parsers"),
    "model": Command("the GILL model: parameter summary", "flows.command.models:add_model_parsers"),
    "import-official": Command(
        "convert the official GILL release into our checkpoint format", "flows.command.models:add_model_parsers"
    ),
    "data": Command("datasets: synthetic world, CC3M, precomputed targets", "flows.command.data:add_data_parsers"),
    "db": Command("query the results database", "flows.command.db:add_db_parsers"),
    "train": Command("train the GILL adapters on precomputed targets", "flows.command.train:add_train_parser"),
    "generate": Command(
        "text and images from a prompt (with optional input images)", "flows.command.inference:add_inference_parsers"
    ),
    "chat": Command(
        "multi-turn chat in the terminal (/image PATH, /reset, /quit)", "flows.command.inference:add_inference_parsers"
    ),
    "index": Command("the local retrieval bank", "flows.command.inference:add_inference_parsers"),
    "ui": Command("the chat demo in the browser (a Gradio app on 127.0.0.1)", "flows.command.ui:add_ui_parser"),
    "annotate": Command(
        "human retrieve-vs-generate votes: labels, baseline, agreement", "flows.command.annotate:add_annotate_parsers"
    ),
    "decision": Command("the retrieve-or-generate decision classifier", "flows.command.decision:add_decision_parsers"),
    "bench": Command(
        "benchmarks (VIST, VisDial, CC3M FID, mapper ablation) into DuckDB", "flows.command.bench:add_bench_parsers"
    ),
    "report": Command(
        "print the benchmark tables (paper layout) or run SQL over them", "flows.command.bench:add_bench_parsers"
    ),
    "demo": Command("run the pipeline stages that exist on the embedded default", "flows.command.demo:add_demo_parser"),
}
"""Every top-level command, in ``gill --help`` order."""

DEFERRED = "deferred_to"
"""The attribute a deferred command's stub parser sets: the registrar that really registers it."""

Registrar = Callable[[argparse._SubParsersAction], object]


def add_command(groups: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """The parser of the top-level command ``name``, with its help from :data:`COMMANDS`."""
    return groups.add_parser(name, help=COMMANDS[name].help)


def add_group(groups: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction:
    """The subparsers of the top-level command group ``name`` (``gill name SUBCOMMAND ...``)."""
    return add_command(groups, name).add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)


def defer(subparsers: argparse._SubParsersAction, name: str, help_text: str, registrar: str) -> None:
    """Add command ``name`` as a stub: it shows in its group's help, and when it is chosen :func:`main` imports
    ``registrar`` (``module:function``, the registrar of the same top-level command, now with this command's real
    parser) and parses again. The stub takes no arguments, not even ``--help``: they all go to the real parser."""
    subparsers.add_parser(name, help=help_text, add_help=False).set_defaults(**{DEFERRED: registrar})


def top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The top-level parser without commands, and the subparsers the registrars add them to."""
    parser = argparse.ArgumentParser(prog="gill", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser, parser.add_subparsers(dest="group", metavar="COMMAND", required=True)


def light_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command deferred to its registrar (imports nothing)."""
    parser, groups = top_parser()
    for name, command in COMMANDS.items():
        defer(groups, name, command.help, command.registrar)
    return parser


def _registrar(spec: str) -> Registrar:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gill ARGS``; returns the exit status."""
    configure_environment()  # before any command module imports the stack (see the module docstring)
    argv = list(sys.argv[1:] if argv is None else argv)
    return execute(resolve_parser(argv).parse_args(argv))


def resolve_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of ``gill ARGV``: the light parser, then the chosen command's, as long as the arguments name a
    deferred command (importing its registrar). Exits as argparse does on ``--help`` or bad input at a level it
    parses (the same messages as the full parser of :mod:`flows.command.parser`)."""
    parser, used = light_parser(), set()
    while (registrar := getattr(parser.parse_known_args(argv)[0], DEFERRED, None)) is not None:
        if registrar in used:
            raise RuntimeError(f"{registrar} registers a deferred stub for the command it was loaded for")
        used.add(registrar)
        parser, groups = top_parser()
        _registrar(registrar)(groups)
    return parser


def execute(args: argparse.Namespace) -> int:
    """Run a parsed command's handler and turn gill's errors into messages and exit statuses (2 invalid input or
    config, 3 missing model weights, 130 interrupted, 141 when stdout's reader left)."""
    _setup_logging(args.verbose)
    try:
        if isinstance(getattr(args, "device", None), str):
            from gill.utils.device import check_device  # torch: only the model commands have a --device

            check_device(args.device)
        return args.func(args)
    except GillError as err:
        sys.stderr.write(f"error: {err.render()}\n")
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `gill annotate status | head`: the reader left; say nothing more
        _silence_stdout()
        return 141


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gill").setLevel(min(level, logging.INFO))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush does not raise a second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
