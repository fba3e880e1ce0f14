"""``gill bench vist|visdial|cc3m-fid|ablation`` and ``gill report``: benchmarks into DuckDB, and their tables.

Registered on the top-level parser by :func:`add_bench_parsers`. Handlers are thin calls into :mod:`eval.bench`
and :mod:`flows.stages.bench_report` (the same functions the benchmark flow calls).

Every ``gill bench`` command runs sharded over processes (:mod:`flows.stages.bench_shards`) under
``torchrun --nproc_per_node N -m flows.command bench ...``, with ``--num-workers N``, or as one shard of
``--shard-index K --num-shards N``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.bench import BenchOptions
from eval.metric_models import MetricModelSpec
from flows.command import add_command, add_group
from flows.options import add_options, options_from
from flows.stages import bench as bench_stage
from flows.stages import report as report_stage
from flows.stages.bench import run_mapper_ablation
from flows.stages.bench_report import build_claims, build_report, frame_rows, latest_run, render, run_sql
from flows.stages.bench_shards import Launch, ShardOptions, launch_from, process_group, shard_root
from flows.stages.html_report import html_index
from flows.store import db_path, query
from flows.workdir import Workdir
from gill.errors import InputError


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _options(args: argparse.Namespace) -> BenchOptions:
    return options_from(BenchOptions, args)


def _metric_spec(args: argparse.Namespace):  # -> MetricModelSpec

    return MetricModelSpec(
        clip=args.clip_model, lpips_weights=args.lpips_weights, inception_weights=args.inception_weights
    )


def _launch(args: argparse.Namespace) -> Launch:
    return launch_from(options_from(ShardOptions, args))


def _print(summaries, workdir: Path, launch: Launch = Launch()) -> None:
    if not launch.sharding.merges:  # a shard process: its share only; the writer prints the tables
        for s in summaries:
            _out(
                f"{launch.sharding.describe()}: {s.benchmark}: {s.scored} sample rows scored, {s.skipped} skipped, "
                f"{s.resumed} already scored (run {s.run_id})"
            )
        if summaries and not launch.sharding.distributed:
            _out(
                f"rows: {shard_root(workdir, summaries[0].run_id)}; once every shard is done, run the same command "
                "without --shard-index and --num-shards to merge them and compute the results"
            )
        return
    for s in summaries:
        _out(
            f"{s.benchmark}: {s.scored} sample rows scored, {s.skipped} skipped, {s.resumed} already scored "
            f"(run {s.run_id})"
        )
    if summaries:
        _out()
        _out(build_report(workdir, run_id=summaries[0].run_id))
        _out(f"images: {summaries[0].out_dir}")
        _out(
            f'query: gill report --workdir {workdir} --sql "SELECT * FROM results WHERE run_id = '
            f"'{summaries[0].run_id}'\""
        )


def cmd_bench_vist(args: argparse.Namespace) -> int:
    """VIST Table 1 settings and recall@k."""
    data = {"sis_json": args.sis_json, "images": args.images}
    return _run_bench(args, "vist", data, args.settings)


def cmd_bench_visdial(args: argparse.Namespace) -> int:
    """VisDial Table 2 settings and recall@k."""
    data = {"dialogs_json": args.dialogs_json, "images": args.images}
    return _run_bench(args, "visdial", data, args.rounds)


def cmd_bench_cc3m_fid(args: argparse.Namespace) -> int:
    """CC3M validation FID."""
    return _run_bench(args, "cc3m-fid", {"split": args.split}, None)


def _run_bench(args: argparse.Namespace, benchmark: str, data: dict, settings: list | None) -> int:
    launch = _launch(args)
    with process_group(launch.sharding):
        summaries = bench_stage.run(
            Workdir.at(args.workdir),
            benchmark,
            checkpoint=args.checkpoint,
            data=data,
            options=_options(args),
            settings=settings,
            metric_spec=_metric_spec(args),
            sharding=launch.sharding,
            workers=launch.workers,
        )
    _print(summaries, args.workdir, launch)
    return 0


def cmd_bench_ablation(args: argparse.Namespace) -> int:
    """Mapper ablation over user-supplied checkpoints."""

    launch = _launch(args)
    with process_group(launch.sharding):
        summaries = run_mapper_ablation(
            args.workdir,
            args.checkpoints,
            sis_json=args.sis_json,
            images=args.images,
            options=_options(args),
            metric_spec=_metric_spec(args),
            sharding=launch.sharding,
            workers=launch.workers,
        )
    if not launch.sharding.merges:
        _print(summaries, args.workdir, launch)
        return 0
    for s in summaries:
        _out(f"{s.benchmark}: {s.scored} scored, {s.skipped} skipped, {s.resumed} already scored (run {s.run_id})")
    _out(render(frame_rows(query(db_path(args.workdir), "SELECT * FROM table_mapper_ablation"))))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the paper tables (or a SQL query), draw the figures and sample grids, saying where they are, and with
    ``--html`` write the web page."""

    if args.html is not None and (args.sql or args.claims):
        raise InputError(
            "--html writes the whole report",
            [f"leave out {'--sql' if args.sql else '--claims'} (the page holds the claims table too)"],
        )
    if args.sql:
        _out(run_sql(args.workdir, args.sql, args.format).rstrip("\n"))
        return 0
    if args.claims:
        _out(build_claims(args.workdir, run_id=args.run_id, fmt=args.format).rstrip("\n"))
        return 0
    workdir = Workdir.at(args.workdir)
    run_id = args.run_id or latest_run(args.workdir)
    if run_id is None:  # no benchmark run yet: the report says so
        _out(build_report(args.workdir, run_id=None, fmt=args.format).rstrip("\n"))
        return 0
    outcome = report_stage.run(
        workdir,
        run_id,
        fmt=args.format,
        figures=not args.no_plot,
        plot=args.plot,
        training_run=args.training_run,
        html=args.html,
    )
    _out(outcome.report.rstrip("\n"))
    for name, png in outcome.figures.items():
        _out(f"figure {name}: {png} (and {png.with_suffix('.pdf').name})")
    for grid in outcome.grids:
        _out(f"grid: {grid}")
    if args.html is not None:
        _out(f"report: {html_index(args.html)} (open it in a browser; the folder is self-contained)")
    return 0


def _add_common(p: argparse.ArgumentParser, *, seeds: str = "42", one_checkpoint: bool = True) -> None:
    p.add_argument("--workdir", type=Path, required=True, help="the workdir of gill train / gill index build")
    if one_checkpoint:
        p.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the newest run's best/ or final/)")
    else:
        p.add_argument(
            "--checkpoint",
            dest="checkpoints",
            type=Path,
            action="append",
            required=True,
            help="a checkpoint to compare (repeat: e.g. one per mapper kind)",
        )
    add_options(p, BenchOptions, defaults={"seeds": _ints(seeds)})
    g = p.add_argument_group(
        "several processes (or run under torchrun --nproc_per_node N -m flows.command bench ...: one shard per rank)"
    )
    add_options(g, ShardOptions)
    g = p.add_argument_group("metric models (default: from the preset; real weights are never swapped for random)")
    g.add_argument("--clip-model", metavar="ID_OR_DIR", help="CLIP for CLIP similarity (paper: ViT-L/14)")
    g.add_argument("--lpips-weights", metavar="FILE", help="torchvision alexnet-owt-7be5be79.pth for LPIPS")
    g.add_argument("--inception-weights", metavar="FILE", help="clean-fid's inception-2015-12-05.pt for FID")


def add_bench_parsers(groups: argparse._SubParsersAction) -> None:
    """Register ``gill bench ...`` and ``gill report``."""
    sub = add_group(groups, "bench")
    p = sub.add_parser("vist", help="VIST contextual generation (paper Table 1) and retrieval recall")
    p.add_argument("--sis-json", type=Path, required=True, help="VIST story-in-sequence JSON (any split)")
    p.add_argument("--images", type=Path, required=True, help="folder of {photo_flickr_id}.{jpg,jpeg,png,gif}")
    p.add_argument(
        "--settings",
        type=_names,
        default=("1cap", "5cap", "5cap4img"),
        help="comma-separated: 1cap, 5cap, 5cap4img (default all)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_bench_vist)
    p = sub.add_parser("visdial", help="VisDial contextual generation (paper Table 2) and retrieval recall")
    p.add_argument("--dialogs-json", type=Path, required=True, help="visdial_1.0_val.json")
    p.add_argument("--images", type=Path, required=True, help="folder of VisualDialog_val2018_{id:012d}.jpg")
    p.add_argument("--rounds", type=_ints, default=(1, 5, 10), help="dialog rounds of context (default 1,5,10)")
    _add_common(p)
    p.set_defaults(func=cmd_bench_visdial)
    p = sub.add_parser("cc3m-fid", help="FID of images generated from CC3M validation captions (clean-fid)")
    p.add_argument("--split", default="val", help="image-shard split with the real images (default val)")
    _add_common(p)
    p.set_defaults(func=cmd_bench_cc3m_fid)
    p = sub.add_parser("ablation", help="mapper ablation: CC3M FID and VIST CLIP similarity per checkpoint")
    p.add_argument("--sis-json", type=Path, help="VIST SIS JSON (for the VIST column)")
    p.add_argument("--images", type=Path, help="VIST images folder")
    _add_common(p, one_checkpoint=False)
    p.set_defaults(func=cmd_bench_ablation)

    p = add_command(groups, "report")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--sql", help="a read-only SQL query over the database (tables runs, samples, results, ...)")
    p.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    p.add_argument("--run-id", help="benchmark run (default: the latest with results)")
    p.add_argument("--claims", action="store_true", help="print only the claims table (which paper claims hold)")
    p.add_argument(
        "--plot", type=Path, help="where the context figure goes, a .png (default W/bench/reports/context_effect.png)"
    )
    p.add_argument(
        "--training-run",
        help="training run whose curves to draw (default: the run of the benchmarked checkpoint, else the default run)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw the figures and the sample grids")
    p.add_argument(
        "--html",
        type=Path,
        metavar="OUT",
        help="also write a static web page into folder OUT (replaced): the tables with their 95%% intervals, "
        "the claims, the figures and a browser over every sample (OUT/index.html opens from file://)",
    )
    p.set_defaults(func=cmd_report)
