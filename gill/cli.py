"""The ``gill`` command line. Each subcommand is a thin call into the library (the same functions flows call).

Run ``gill --help`` for the list; ``gill <group> <command> --help`` for details. Errors from bad input are
printed as plain messages (no traceback) and exit non-zero: 2 for invalid input or config, 3 for missing
model weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gill.config import GILLConfig
from gill.errors import GillError

logger = logging.getLogger("gill")

Handler = Callable[[argparse.Namespace], int]


def _out(text: str = "") -> None:
    """Write a line of command output to stdout (results, not logs)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- config selection shared by every command that touches models ----------------------------------------


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset``/``--config`` plus per-backbone overrides."""
    group = parser.add_argument_group("model configuration")
    group.add_argument("--preset", default="tiny", help="named preset: tiny (default, CPU) or paper")
    group.add_argument("--config", type=Path, help="JSON config file (overrides --preset)")
    for role, flag in (("lm", "--lm"), ("vision", "--vision"), ("sd", "--sd"), ("clip_metric", "--clip-metric")):
        group.add_argument(
            flag, dest=role, metavar="ID_OR_DIR", help=f"override the {role} backbone (Hub id or local dir)"
        )


def resolve_config(args: argparse.Namespace, build: bool = True) -> GILLConfig:
    """The config a command runs with: file or preset, then backbone overrides."""
    from gill.presets import get_preset

    config = GILLConfig.load(args.config) if args.config else get_preset(args.preset, build=build)
    return config.with_backbones(lm=args.lm, vision=args.vision, sd=args.sd, clip_metric=args.clip_metric)


# -- models ----------------------------------------------------------------------------------------------


def cmd_models_build_tiny(args: argparse.Namespace) -> int:
    """Build the tiny zoo into --out."""
    from gill.zoo import build_tiny_zoo

    manifest = build_tiny_zoo(args.out, seed=args.seed)
    _out(f"tiny zoo written to {args.out} in {manifest.build_seconds:.1f} s")
    for name, digest in manifest.components.items():
        _out(f"  {name:5s} sha256 {digest[:16]}")
    return 0


def cmd_models_check(args: argparse.Namespace) -> int:
    """Report, for each backbone, whether it is available locally; exit 3 if any is missing."""
    from gill.hub import check_backbones, missing_weights_error

    config = resolve_config(args)
    statuses = check_backbones(config.backbones)
    if args.json:
        _out(json.dumps([{"role": s.role, "id": s.ref.id, "revision": s.ref.revision, "available": s.available,
                          "local_dir": str(s.local_dir) if s.local_dir else None, "problem": s.problem}
                         for s in statuses], indent=2))  # fmt: skip
    else:
        _out(f"preset: {config.preset}")
        for s in statuses:
            mark = "ok     " if s.available else "MISSING"
            _out(f"  {mark} {s.role:12s} {s.ref.id}" + (f"\n          {s.problem}" if s.problem else ""))
    missing = [s for s in statuses if not s.available]
    if missing and not args.json:
        sys.stderr.write(missing_weights_error(missing, config.preset).render() + "\n")
    return 3 if missing else 0


# -- config ----------------------------------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print (or save) the resolved config and the dims read from the backbones' configs."""
    from gill.factory import derive_dims

    config = resolve_config(args)
    payload = {"config": config.to_dict()}
    if not args.no_dims:
        from dataclasses import asdict

        payload["derived_dims"] = asdict(derive_dims(config))
    if args.out:
        config.save(args.out)
        _out(f"config written to {args.out}")
    _out(json.dumps(payload, indent=2, sort_keys=True))
    return 0


def cmd_config_presets(args: argparse.Namespace) -> int:
    """List the named presets."""
    from gill.presets import PRESETS

    for name, factory in PRESETS.items():
        _out(f"{name:6s} {(factory.__doc__ or '').strip().splitlines()[0]}")
    return 0


# -- data ------------------------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Write the synthetic shapes world (CC3M TSV, VIST SIS, VisDial json) into --out."""
    from gill.synth import SynthConfig, synthesize_world

    config = SynthConfig(seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_stories=args.n_stories,
                         n_dialogs=args.n_dialogs, image_size=args.image_size)  # fmt: skip
    summary = synthesize_world(args.out, config, progress=not args.quiet)
    _out(json.dumps(summary.to_dict(), indent=2, default=str))
    return 0


# -- demo ------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every stage that exists so far on the embedded default and print a summary."""
    from gill.demo import run_demo

    report = run_demo(args.workdir, resolve_config(args, build=False), seed=args.seed)
    _out(report.render())
    return 0


# -- parser ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``gill`` argument parser."""
    parser = argparse.ArgumentParser(prog="gill", description="GILL: train, reproduce and compare LLM-to-image models.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    models = groups.add_parser("models", help="backbones: build the tiny zoo, check availability").add_subparsers(
        dest="command", metavar="SUBCOMMAND", required=True
    )
    p = models.add_parser("build-tiny", help="build the tiny random-initialised model zoo")
    p.add_argument("--out", type=Path, required=True, help="folder to write the zoo into")
    p.add_argument("--seed", type=int, default=0, help="seed for tokenizer corpus and weights")
    p.set_defaults(func=cmd_models_build_tiny)
    p = models.add_parser("check", help="report whether each backbone is available locally")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models_check)

    config = groups.add_parser("config", help="show configs and presets").add_subparsers(
        dest="command", metavar="SUBCOMMAND", required=True
    )
    p = config.add_parser("show", help="print the resolved config and derived dims")
    add_config_args(p)
    p.add_argument("--out", type=Path, help="also save the config JSON here")
    p.add_argument("--no-dims", action="store_true", help="skip reading the backbones' configs")
    p.set_defaults(func=cmd_config_show)
    config.add_parser("presets", help="list the named presets").set_defaults(func=cmd_config_presets)

    data = groups.add_parser("data", help="datasets: synthetic world").add_subparsers(
        dest="command", metavar="SUBCOMMAND", required=True
    )
    p = data.add_parser("synth", help="write the synthetic shapes world in CC3M/VIST/VisDial formats")
    p.add_argument("--out", type=Path, required=True, help="folder to write the world into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=256, help="CC3M-style training pairs")
    p.add_argument("--n-val", type=int, default=64, help="CC3M-style validation pairs")
    p.add_argument("--n-stories", type=int, default=24, help="VIST stories (5 images each)")
    p.add_argument("--n-dialogs", type=int, default=24, help="VisDial dialogs (10 rounds each)")
    p.add_argument("--image-size", type=int, default=128, help="rendered image side in pixels")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_synth)

    p = groups.add_parser("demo", help="run the pipeline stages that exist on the embedded default")
    add_config_args(p)
    p.add_argument("--workdir", type=Path, default=Path("work/demo"), help="where outputs go (default work/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gill").setLevel(min(level, logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gill`` console command."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except GillError as err:
        sys.stderr.write(f"error: {err.render()}\n")
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
