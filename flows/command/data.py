"""``gill data synth|download|precompute``: the synthetic world, CC3M shards and the precomputed targets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.command import add_group
from flows.command.config_args import add_config_args, resolve_config
from flows.options import add_options, options_from
from flows.stages import download as download_stage
from flows.stages import precompute as precompute_stage
from flows.stages import world as world_stage
from flows.stages.download import DownloadOptions
from flows.workdir import Workdir
from gill.data.precompute import PrecomputeOptions
from gill.synth import SynthConfig


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


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


def add_data_parsers(groups: argparse._SubParsersAction) -> None:
    """Register ``data synth|download|precompute`` on the top-level ``gill`` parser."""
    data = add_group(groups, "data")
    p = data.add_parser("synth", help="write the synthetic shapes world in CC3M/VIST/VisDial formats")
    p.add_argument("--out", type=Path, required=True, help="folder to write the world into")
    add_options(p, SynthConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_synth)

    p = data.add_parser("download", help="download a CC3M url list into webdataset shards, with a yield report")
    p.add_argument("--urls", type=Path, required=True, help="CC3M TSV (caption<TAB>url, no header) or csv/tsv/parquet")
    p.add_argument("--split", choices=("train", "val"), required=True)
    p.add_argument("--workdir", type=Path, required=True, help="shards go to <workdir>/data/cc3m/<split>/")
    add_options(p, DownloadOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_download)

    p = data.add_parser("precompute", help="precompute frozen vision features and SD text targets per shard")
    add_config_args(p)
    p.add_argument("--split", choices=("train", "val"), required=True)
    p.add_argument("--workdir", type=Path, required=True, help="work folder holding data/cc3m/<split>/")
    add_options(p, PrecomputeOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_precompute)
