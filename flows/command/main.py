"""The ``gill`` command line. Each subcommand is a thin call into the library (the same functions flows call).

Run ``gill --help`` for the list; ``gill <group> <command> --help`` for details. Errors from bad input are
printed as plain messages (no traceback) and exit non-zero: 2 for invalid input or config, 3 for missing
model weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from flows.command.annotate import add_annotate_parsers
from flows.command.bench import add_bench_parsers
from flows.command.decision import add_decision_parsers
from flows.command.inference import add_inference_parsers
from flows.demo import run_demo
from flows.options import ModelChoice, add_options, options_from
from flows.stages import download as download_stage
from flows.stages import precompute as precompute_stage
from flows.stages import train as train_stage
from flows.stages import world as world_stage
from flows.stages.bench_report import run_sql
from flows.stages.download import DownloadOptions
from flows.stages.train import TrainOptions, TrainOverrides
from flows.workdir import Workdir
from gill.config import GILLConfig
from gill.data.precompute import PrecomputeOptions
from gill.errors import GillError
from gill.factory import derive_dims
from gill.hub import check_backbones, configure_environment, missing_weights_error
from gill.model import summary
from gill.official import import_official
from gill.presets import PRESETS
from gill.synth import SynthConfig
from gill.utils.device import check_device
from gill.zoo import build_tiny_zoo
from gill.zoo.tiny import build_world_sd, ship_tiny_zoo, shipped_zoo_dir

logger = logging.getLogger("gill")

Handler = Callable[[argparse.Namespace], int]


def _out(text: str = "") -> None:
    """Write a line of command output to stdout (results, not logs)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- config selection shared by every command that touches models ----------------------------------------


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset``/``--config`` plus per-backbone overrides (the fields of :class:`flows.options.ModelChoice`)."""
    add_options(parser.add_argument_group("model configuration"), ModelChoice, dests={"config_path": "config"})


def resolve_config(args: argparse.Namespace, build: bool = True) -> GILLConfig:
    """The config a command runs with: file or preset, then backbone overrides."""
    return options_from(ModelChoice, args, dests={"config_path": "config"}).gill_config(build=build)


# -- models ----------------------------------------------------------------------------------------------


def cmd_models_build_tiny(args: argparse.Namespace) -> int:
    """Build the tiny zoo into --out."""

    if args.ship:
        manifest = ship_tiny_zoo(seed=args.seed)
        _out(f"tiny zoo built and written to {shipped_zoo_dir()} in {manifest.build_seconds:.1f} s")
    else:
        manifest = build_tiny_zoo(args.out, seed=args.seed)
        _out(f"tiny zoo written to {args.out} in {manifest.build_seconds:.1f} s")
    for name, digest in manifest.components.items():
        _out(f"  {name:5s} sha256 {digest[:16]}")
    return 0


def cmd_models_build_world_sd(args: argparse.Namespace) -> int:
    """Train the world SD from scratch and write it (default: over the shipped weights in data_manifests)."""

    folder, report = build_world_sd(seed=args.seed, out=args.out, progress=_out)
    _out(f"world SD written to {folder} in {sum(report.seconds.values()) / 60:.1f} min ({report.seconds})")
    _out("check its quality: python bench/world_sd.py --sd " + str(folder))
    return 0


def cmd_models_check(args: argparse.Namespace) -> int:
    """Report, for each backbone, whether it is available locally; exit 3 if any is missing."""

    config = resolve_config(args)
    statuses = check_backbones(config.backbones)
    if args.json:
        _out(
            json.dumps(
                [
                    {
                        "role": s.role,
                        "id": s.ref.id,
                        "revision": s.ref.revision,
                        "available": s.available,
                        "local_dir": str(s.local_dir) if s.local_dir else None,
                        "problem": s.problem,
                    }
                    for s in statuses
                ],
                indent=2,
            )
        )
    else:
        _out(f"preset: {config.preset}")
        for s in statuses:
            mark = "ok     " if s.available else "MISSING"
            _out(f"  {mark} {s.role:12s} {s.ref.id}" + (f"\n          {s.problem}" if s.problem else ""))
    missing = [s for s in statuses if not s.available]
    if missing and not args.json:
        sys.stderr.write(missing_weights_error(missing, config.preset).render() + "\n")
    return 3 if missing else 0


# -- model ----------------------------------------------------------------------------------------------


def cmd_model_summary(args: argparse.Namespace) -> int:
    """Print per-module trainable/frozen parameter counts (no weights needed) next to the released GILL's."""

    _out(summary(resolve_config(args)).render())
    return 0


def cmd_import_official(args: argparse.Namespace) -> int:
    """Convert an official GILL release folder (model_args.json, pretrained_ckpt.pth.tar) into our format."""

    report = import_official(args.dir, args.out, lm=args.lm, vision=args.vision, sd=args.sd)
    _out(report.render())
    return 0


# -- config ----------------------------------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print (or save) the resolved config and the dims read from the backbones' configs."""

    config = resolve_config(args)
    payload = {"config": config.to_dict()}
    if not args.no_dims:
        payload["derived_dims"] = asdict(derive_dims(config))
    if args.out:
        config.save(args.out)
        _out(f"config written to {args.out}")
    _out(json.dumps(payload, indent=2, sort_keys=True))
    return 0


def cmd_config_presets(args: argparse.Namespace) -> int:
    """List the named presets."""

    for name, factory in PRESETS.items():
        _out(f"{name:6s} {(factory.__doc__ or '').strip().splitlines()[0]}")
    return 0


# -- data ------------------------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Write the synthetic shapes world (CC3M TSV, VIST SIS, VisDial json) into --out."""
    summary = world_stage.build(args.out, options_from(SynthConfig, args), progress=not args.quiet)
    _out(json.dumps(summary.to_dict(), indent=2, default=str))
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """Download a CC3M split into webdataset shards and record the yield in <workdir>/gill.duckdb."""
    options = options_from(DownloadOptions, args)
    workdir = Workdir.at(args.workdir)
    report = download_stage.run(workdir, args.split, args.urls, options, progress=not args.quiet)
    _out(report.summary())
    _out(f"yield report: {workdir.database} (tables download_shards, download_failures)")
    return 0


def cmd_data_precompute(args: argparse.Namespace) -> int:
    """Precompute frozen vision features and SD text-encoder targets for every downloaded shard."""
    options = options_from(PrecomputeOptions, args)
    workdir = Workdir.at(args.workdir)
    results = precompute_stage.run(workdir, args.split, resolve_config(args), options, progress=not args.quiet)
    done = [r for r in results if not r.skipped]
    samples = sum(r.count for r in results)
    _out(f"{len(results)} shards, {samples} samples: {len(done)} computed, {len(results) - len(done)} up to date")
    _out(f"features: {workdir.features(args.split)}; rows in {workdir.database} (precompute_shards)")
    return 0


def cmd_db_query(args: argparse.Namespace) -> int:
    """Run SQL against <workdir>/gill.duckdb and print the result table (the same function as ``gill report --sql``)."""

    _out(run_sql(args.workdir, args.sql, "csv" if args.csv else "table", max_rows=args.max_rows).rstrip("\n"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the adapters on precomputed targets; metrics go to <workdir>/gill.duckdb and a loss-curve PNG."""
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
    _out(f'loss curve: {curve}; metrics: gill db query --workdir {args.workdir} "SELECT * FROM train_metrics"')
    return 0


# -- demo ------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every stage that exists so far on the embedded default and print a summary."""

    report = run_demo(args.workdir, resolve_config(args, build=False), seed=args.seed)
    _out(report.render())
    return 0


# -- parser ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``gill`` argument parser."""
    parser = argparse.ArgumentParser(prog="gill", description="GILL: train, reproduce and compare LLM-to-image models.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    _add_models_parsers(_group(groups, "models", "backbones: build the tiny zoo, check availability"))
    _add_config_parsers(_group(groups, "config", "show configs and presets"))
    _add_model_parsers(_group(groups, "model", "the GILL model: parameter summary"))
    _add_import_official_parser(groups)
    data = _group(groups, "data", "datasets: synthetic world, CC3M, precomputed targets")
    _add_synth_parser(data)
    _add_download_parser(data)
    _add_precompute_parser(data)
    _add_db_parsers(_group(groups, "db", "query the results database"))
    _add_train_parser(groups)

    add_inference_parsers(groups)

    add_annotate_parsers(groups)

    add_decision_parsers(groups)

    add_bench_parsers(groups)
    p = groups.add_parser("demo", help="run the pipeline stages that exist on the embedded default")
    add_config_args(p)
    p.add_argument("--workdir", type=Path, default=Path("work/demo"), help="where outputs go (default work/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def _group(groups: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    return groups.add_parser(name, help=help_text).add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)


def _add_models_parsers(models: argparse._SubParsersAction) -> None:
    p = models.add_parser("build-tiny", help="build the tiny model zoo from scratch (the world SD is copied)")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, help="folder to write the zoo into")
    dest.add_argument("--ship", action="store_true", help="rebuild the zoo that ships in data_manifests/tiny_zoo")
    p.add_argument("--seed", type=int, default=0, help="seed for tokenizer corpus and weights")
    p.set_defaults(func=cmd_models_build_tiny)
    p = models.add_parser("build-world-sd", help="train the tiny zoo's Stable Diffusion on the shapes world (slow)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise")
    p.add_argument("--out", type=Path, help="folder for world_sd/ and world_sd.json (default: the shipped location)")
    p.set_defaults(func=cmd_models_build_world_sd)
    p = models.add_parser("check", help="report whether each backbone is available locally")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models_check)


def _add_config_parsers(config: argparse._SubParsersAction) -> None:
    p = config.add_parser("show", help="print the resolved config and derived dims")
    add_config_args(p)
    p.add_argument("--out", type=Path, help="also save the config JSON here")
    p.add_argument("--no-dims", action="store_true", help="skip reading the backbones' configs")
    p.set_defaults(func=cmd_config_show)
    config.add_parser("presets", help="list the named presets").set_defaults(func=cmd_config_presets)


def _add_model_parsers(model: argparse._SubParsersAction) -> None:
    p = model.add_parser("summary", help="per-module trainable/frozen parameter counts (meta device, no weights)")
    add_config_args(p)
    p.set_defaults(func=cmd_model_summary)


def _add_import_official_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("import-official", help="convert the official GILL release into our checkpoint format")
    p.add_argument("dir", type=Path, help="official release folder (model_args.json, pretrained_ckpt.pth.tar, ...)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--lm", help="LM Hub id or local folder (default: model_args.json's opt_version)")
    p.add_argument("--vision", help="CLIP Hub id or local folder (default: model_args.json's visual_encoder)")
    p.add_argument("--sd", help="Stable Diffusion Hub id or local folder (default: SD v1.5)")
    p.set_defaults(func=cmd_import_official)


def _add_synth_parser(data: argparse._SubParsersAction) -> None:
    p = data.add_parser("synth", help="write the synthetic shapes world in CC3M/VIST/VisDial formats")
    p.add_argument("--out", type=Path, required=True, help="folder to write the world into")
    add_options(p, SynthConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_synth)


def _add_precompute_parser(data: argparse._SubParsersAction) -> None:
    p = data.add_parser("precompute", help="precompute frozen vision features and SD text targets per shard")
    add_config_args(p)
    p.add_argument("--split", choices=("train", "val"), required=True)
    p.add_argument("--workdir", type=Path, required=True, help="work folder holding data/cc3m/<split>/")
    add_options(p, PrecomputeOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_precompute)


def _add_train_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("train", help="train the GILL adapters on precomputed targets")
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


def _add_db_parsers(db: argparse._SubParsersAction) -> None:
    p = db.add_parser("query", help="run SQL against <workdir>/gill.duckdb")
    p.add_argument("sql", help='e.g. "SELECT * FROM download_shards"')
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--max-rows", type=int, default=200)
    p.set_defaults(func=cmd_db_query)


def _add_download_parser(data: argparse._SubParsersAction) -> None:
    p = data.add_parser("download", help="download a CC3M url list into webdataset shards, with a yield report")
    p.add_argument("--urls", type=Path, required=True, help="CC3M TSV (caption<TAB>url, no header) or csv/tsv/parquet")
    p.add_argument("--split", choices=("train", "val"), required=True)
    p.add_argument("--workdir", type=Path, required=True, help="shards go to <workdir>/data/cc3m/<split>/")
    add_options(p, DownloadOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_download)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gill").setLevel(min(level, logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gill`` console command (a front end: it sets gill's offline Hub defaults for its own
    process, :func:`gill.hub.configure_environment`; importing the library does not)."""
    configure_environment()
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if isinstance(getattr(args, "device", None), str):
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush does not raise a second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    raise SystemExit(main())
