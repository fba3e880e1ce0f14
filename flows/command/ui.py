"""``gill ui``: the GILL chat demo in the browser (a Gradio app like the official demo's; :mod:`flows.ui`).

Registered by :func:`add_ui_parser`. ``gill ui --workdir W`` loads the work folder's checkpoint with its retrieval
bank (as ``gill chat`` does), then serves the chat page on 127.0.0.1 (``--host`` to listen elsewhere) until
interrupted. It checks its arguments and the port before it loads anything: bad input exits 2 with the problems and
no server starts. The decoding and image options (those of ``gill chat``) set the page's starting values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flows.command import add_command
from flows.command.annotate_app import bind_socket
from flows.command.inference import DEFAULT_IMAGE_FREQUENCY, SETTINGS_DESTS, add_checkpoint_args, load_pipeline
from flows.options import add_options, options_from
from flows.ui import build_app, serve
from flows.workdir import Workdir
from gill.config import ConfigError
from gill.errors import InputError
from gill.pipeline import GenerationSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
UI_SETTINGS_EXCLUDED = ("use_cache", "ret_scale_factor")
"""Options of GenerationSettings that ``gill ui`` does not take: the page's image-frequency slider replaces the
official ``ret_scale_factor`` (they are two ways of saying how often images come)."""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _settings(args: argparse.Namespace) -> GenerationSettings:
    try:
        return options_from(GenerationSettings, args, dests=SETTINGS_DESTS)
    except ConfigError as err:
        raise InputError("invalid generation options", err.problems) from err


def check_args(args: argparse.Namespace) -> GenerationSettings:
    """Every problem of the arguments at once (:class:`InputError`), then the port: it must be free on ``--host``.
    Returns the starting settings. Loads nothing."""
    problems = []
    if not 1 <= args.port <= 65535:
        problems.append(f"--port: must be in 1..65535, got {args.port}")
    if not args.workdir.is_dir():
        problems.append(f"--workdir {str(args.workdir)!r}: no such folder")
    if args.checkpoint is not None and not (args.checkpoint / "config.json").is_file():
        problems.append(f"--checkpoint {str(args.checkpoint)!r}: not a GILL checkpoint (no config.json)")
    try:
        settings = _settings(args)
    except InputError as err:
        problems += err.problems
    if problems:
        raise InputError(
            "cannot start gill ui; no server was started",
            problems,
            hint="--workdir: a work folder with a trained run (make demo writes work/demo; gill train --workdir W)",
        )
    bind_socket(args.host, args.port).close()  # a port in use or a bad --host: a clear error before loading
    return settings


def cmd_ui(args: argparse.Namespace) -> int:
    """Check the arguments, load the pipeline, serve the chat page until interrupted."""
    settings = check_args(args)
    workdir = Workdir.at(args.workdir)
    workdir.checkpoint(args.checkpoint)  # no trained run: exit 2 before loading the backbones
    pipe = load_pipeline(args)
    out_dir = args.out or workdir.outputs("ui", time.strftime("%Y%m%d-%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(pipe, out_dir, settings)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    _out(f"GILL chat on http://{shown}:{args.port}/ (checkpoint {pipe.checkpoint_dir}; images in {out_dir})")
    _out("press Ctrl+C to stop")
    # No environment variable is set here: every outbound feature of Gradio (analytics and its version check,
    # share links, SSR, MCP, monitoring, run history) is turned off by the arguments of flows.ui.serve.
    serve(app, host=args.host, port=args.port, files=out_dir)
    return 0


def add_ui_parser(groups: argparse._SubParsersAction) -> None:
    """Register ``ui`` on the top-level ``gill`` parser."""
    p = add_command(groups, "ui")
    add_checkpoint_args(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--out", type=Path, help="where returned images and their sidecars go (default W/ui/<time>)")
    add_options(
        p.add_argument_group("starting values of the page's controls, and the other decoding options"),
        GenerationSettings,
        exclude=UI_SETTINGS_EXCLUDED,
        defaults={"image_frequency": DEFAULT_IMAGE_FREQUENCY},
        dests=SETTINGS_DESTS,
    )
    p.set_defaults(func=cmd_ui)
