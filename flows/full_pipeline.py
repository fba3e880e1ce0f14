"""Flow ``gill`` (deployment ``gill/full-pipeline``): GILL end to end, one cached task per stage.

world -> download -> precompute (one task per shard) -> train -> retrieval bank -> judging candidates -> votes ->
decision classifier -> VIST / VisDial / CC3M-FID benchmarks -> report. Each task is a thin call into
``gill`` / ``eval`` / ``annotations`` (the functions the ``gill`` command calls) and takes paths, never tensors.

Caching and resume: every stage task is keyed on its inputs and its source
(``INPUTS + TASK_SOURCE``), and its inputs include a fingerprint of what it reads (file hashes, the checkpoint
id, the upstream shards), so a completed pipeline re-runs as all-``Cached`` and a changed input re-runs exactly
the stages downstream of it. Cache records and results live under ``<workdir>/.prefect/``. A stage that crashed
has no cache record, so a re-run starts there, and the stage itself resumes at its first unfinished shard,
checkpoint or sample (img2dataset shards, fingerprinted feature shards, training checkpoints, candidate images,
benchmark sample rows). Artifacts (download yield, training curve, decision F1 against the human baseline,
benchmark tables) each name the DuckDB file to query.
"""

# No ``from __future__ import annotations`` here: Prefect builds the parameter schema of a served flow from the
# signature, and a string annotation ("PipelineParams") leaves that pydantic model undefined in the run process.
import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from flows.params import PipelineParams
from flows.precompute_targets import encoders_for

CACHE_DIR = ".prefect"


# -- caching --------------------------------------------------------------------------------------------------------


def _results_block(workdir: Path) -> Any:
    """A saved LocalFileSystem block for this workdir's task results (Prefect requires saved result storage)."""
    from prefect.filesystems import LocalFileSystem

    folder = (workdir / CACHE_DIR / "results").resolve()
    name = "gill-results-" + hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    block = LocalFileSystem(basepath=str(folder))
    block.save(name, overwrite=True)
    return block


def cached(fn: Any, workdir: Path, refresh: bool, storage: Any) -> Any:
    """``fn`` keyed on inputs and source, with its cache records and results under ``workdir/.prefect``."""
    policy = (INPUTS + TASK_SOURCE).configure(key_storage=str((workdir / CACHE_DIR / "cache").resolve()))
    return fn.with_options(cache_policy=policy, persist_result=True, result_storage=storage, refresh_cache=refresh)


def file_digest(path: Path | None) -> str | None:
    """sha256 of a file (None for None): what a stage keys on besides the path."""
    from gill.utils.io import sha256_file

    return sha256_file(path) if path is not None else None


def folder_digest(folder: Path | None) -> str | None:
    """A cheap fingerprint of a folder: names, sizes and mtimes of its files."""
    if folder is None:
        return None
    entries = sorted(
        f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in Path(folder).rglob("*")
        if p.is_file()
    )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def adapters_id(checkpoint: Path) -> str:
    """The checkpoint id: a hash of its adapters (unchanged when a decision head is added)."""
    from gill.retrieval import checkpoint_id

    return checkpoint_id(checkpoint)


def checkpoint_fingerprint(checkpoint: Path) -> str:
    """The checkpoint id plus its decision head, when it has one (what the benchmarks' ``gill`` system uses)."""
    head = checkpoint / "decision.safetensors"
    return adapters_id(checkpoint) + (":" + (file_digest(head) or "")[:16] if head.is_file() else "")


# -- stage tasks ----------------------------------------------------------------------------------------------------


@task(task_run_name="synthetic world")
def world_task(workdir: Path, synth: dict[str, int]) -> dict[str, str]:
    """Build (or reuse) the synthetic shapes world: the embedded default data (``gill data synth``)."""
    from gill.synth import SynthConfig, synthesize_world

    world = synthesize_world(workdir / "world", SynthConfig(**synth), progress=False)
    return {k: str(v) for k, v in world.to_dict().items()}


@task(task_run_name="download cc3m {split}")
def download_task(workdir: Path, split: str, urls: Path, urls_sha256: str | None, options: dict) -> dict:
    """img2dataset over one url list into webdataset shards; the yield goes to DuckDB ``download_shards``."""
    from eval.db import db_path, record_download
    from flows.stages.download import DownloadOptions, download_split

    report = download_split(urls, split, workdir, DownloadOptions(**options), progress=False)
    record_download(db_path(workdir), split, report.shard_rows(), report.failure_rows())
    create_table_artifact(
        key=f"cc3m-yield-{split}",
        table=[{**r} for r in report.shard_rows()],
        description=f"{report.summary().splitlines()[0]}; query {db_path(workdir)} "
        "tables download_shards, download_failures",
    )
    print(report.summary().splitlines()[0])
    return {"split": split, "total": report.total, "successes": report.successes}


@task(task_run_name="precompute {split} shard {shard_tar.stem}")
def precompute_task(
    shard_tar: Path, shard_sha256: str, split: str, workdir: Path, config_json: str, options: Any
) -> dict:
    """Frozen targets of one image shard (one task per shard, so a Dask task runner can spread them)."""
    from gill.data.precompute import precompute_shard

    result = precompute_shard(shard_tar, split, workdir, encoders_for(config_json, options), options)
    return result.row()


@task(task_run_name="train adapters {run_id}")
def train_task(
    workdir: Path,
    config_json: str,
    overrides: dict,
    run_id: str,
    features: list[str],
    device: str,
    mark_default: bool = True,
) -> dict:
    """Train (or resume, or recognise as finished) the adapters; the curve summary becomes an artifact."""
    from eval.db import db_path
    from flows.stages.train import train_or_resume
    from gill.config import GILLConfig

    data = hashlib.sha256("\n".join(features).encode()).hexdigest()  # a run never resumes onto other data
    summary = train_or_resume(
        GILLConfig.from_json(config_json),
        workdir,
        overrides=overrides,
        run_id=run_id,
        device=device,
        mark_default=mark_default,
        data_fingerprint=data,
    )
    create_table_artifact(
        key="train-curve",
        table=summary["curve"],
        description=f"run {run_id}: first and last logged values of each loss and the last "
        f"validation; every step in {db_path(workdir)} table train_metrics",
    )
    return summary


@task(task_run_name="retrieval bank")
def index_task(workdir: Path, checkpoint: Path, checkpoint_id: str, features: list[str]) -> dict:
    """Embed the training images with the checkpoint's retrieval head (``gill index build``)."""
    from gill.retrieval import build_bank

    info = build_bank(workdir, checkpoint, progress=False)
    return {"bank": str(info.path), "images": info.count, "approximate": info.approximate}


@task(task_run_name="judging candidates")
def candidates_task(
    workdir: Path, checkpoint: Path, checkpoint_id: str, limit: int | None, sd_steps: int, device: str
) -> dict:
    """SD-baseline and top-bank images per prompt (world prompts on the embedded default, else PartiPrompts), loaded
    into the judging store with their images, open to people (``gill annotate build``, then ``serve``)."""
    from annotations.store import JudgingStore
    from flows.stages.candidates import build_candidates, import_candidates

    s = build_candidates(workdir, checkpoint=checkpoint, limit=limit, sd_steps=sd_steps, device=device)
    store = JudgingStore(workdir)
    import_candidates(workdir, store)
    return {
        "total": s.total,
        "built": s.built,
        "skipped": s.skipped,
        "images": str(s.images_dir),
        "store": str(store.path),
        "judgeable_items": store.judgeable_items(),
    }


@task(task_run_name="votes")
def votes_task(
    workdir: Path,
    votes: Path | None,
    votes_sha256: str | None,
    simulated: bool,
    panel_seed: int,
    candidates_digest: str | None,
) -> dict:
    """The votes the decision classifier is fitted on: a given TSV, else on the embedded default the SIMULATED
    panel's votes (5 answer-key judges voting in their own panel of the store), else the shipped PartiPrompts votes
    (read from their file: they never become imageless items of the live store)."""
    from flows.stages.votes import PanelConfig, run_simulated_panel

    if votes is not None or not simulated:
        return _votes_source(workdir, votes, simulated)
    summary = run_simulated_panel(workdir, PanelConfig(seed=panel_seed))
    return {
        **_votes_source(workdir, votes, simulated),
        "simulated_votes": summary.votes,
        "items": summary.items,
        "judges": list(summary.judges),
    }


@task(task_run_name="fit decision classifier")
def decision_task(
    workdir: Path,
    checkpoint: Path,
    checkpoint_id: str,
    votes_tsv: str,
    votes_sha256: str | None,
    panel: str,
    steps: int | None,
    device: str,
    head: str,
) -> dict:
    """Fit the retrieve-or-generate classifier on the votes; F1 beside the judges' baseline as an artifact.

    The official head (h[IMG0], the notebook's recipe) is always fitted and recorded; with ``head="bank-aware"``
    a second head (h[IMG0] + top retrieval score, balanced recipe) is fitted too and is the one saved."""
    from eval.db import db_path
    from eval.decision import InsufficientLabelsError, fit_decision_stage

    who = "human" if panel == "human" else f"{panel.upper()} panel (answer-key judges, not people)"
    try:
        fits = fit_decision_stage(
            workdir, checkpoint, votes_path=Path(votes_tsv), panel=panel, head=head, steps=steps, device=device
        )
    except InsufficientLabelsError as err:  # a small run: the pipeline goes on, the gill system always generates
        create_markdown_artifact(
            key="decision-f1",
            markdown=f"decision classifier **not fitted** on {votes_tsv} "
            f"({who} votes): {err}; query {db_path(workdir)} table decision_eval",
        )
        return {"fitted": False, "reason": str(err)}
    official, aware = fits.official, fits.bank_aware
    figures = official.as_dict()
    rows = _decision_rows("official head, h[IMG0]", figures)
    if aware is not None:
        rows += _decision_rows("bank-aware head, h[IMG0] + retrieval score, balanced", aware.as_dict())
    rows += [
        {"what": f"{who} baseline (official, leaky)", "macro_f1": figures["human_official_f1"]},
        {"what": f"{who} baseline (leave-one-judge-out)", "macro_f1": figures["human_loo_f1"]},
    ]
    create_table_artifact(
        key="decision-f1",
        table=rows,
        description=f"retrieve-vs-generate macro-F1 on {votes_tsv} ({who} votes); saved head: {head}; query "
        f"{db_path(workdir)} table decision_eval",
    )
    out = {k: v for k, v in figures.items() if isinstance(v, (int, float, str, bool)) or v is None}
    out["saved_head"] = head
    if aware is not None:
        out["bank_aware_cv_mean_f1"] = aware.cv_mean_f1
        out["bank_aware_official_test_f1"] = aware.official_test_f1
    return out


def _decision_rows(name: str, figures: dict) -> list[dict]:
    return [
        {
            "what": f"{name}: official {figures['n_train']}/rest split (final model)",
            "macro_f1": figures["official_test_f1"],
        },
        {"what": f"{name}: {figures['cv_folds']}-fold CV", "macro_f1": figures["cv_mean_f1"]},
        {
            "what": f"{name}: best on test (notebook; selection on test)",
            "macro_f1": figures["official_best_on_test_f1"],
        },
    ]


@task(task_run_name="benchmark {benchmark}")
def bench_task(
    benchmark: str,
    workdir: Path,
    checkpoint: Path,
    checkpoint_fingerprint: str,
    data: dict,
    data_digest: str | None,
    options_json: str,
) -> dict:
    """One benchmark (``gill bench vist|visdial|cc3m-fid``); resumes at its first unscored sample."""
    from eval.bench import BenchOptions, run_cc3m_fid, run_visdial, run_vist

    raw = json.loads(options_json)
    settings = raw.pop("settings", None)
    options = BenchOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if benchmark == "vist":
        summaries = run_vist(
            workdir, data["sis_json"], data["images"], settings=settings, checkpoint=checkpoint, options=options
        )
    elif benchmark == "visdial":
        summaries = run_visdial(
            workdir, data["dialogs_json"], data["images"], rounds=settings, checkpoint=checkpoint, options=options
        )
    else:
        summaries = [run_cc3m_fid(workdir, checkpoint=checkpoint, options=options)]
    return {
        "run_id": summaries[0].run_id,
        "scored": sum(s.scored for s in summaries),
        "skipped": sum(s.skipped for s in summaries),
        "resumed": sum(s.resumed for s in summaries),
    }


@task(task_run_name="report")
def report_task(workdir: Path, run_id: str, results_digest: str) -> dict:
    """The paper tables (printed and as artifacts) and the context figure."""
    from eval.bench_report import (
        PAPER_TABLES,
        build_claims,
        build_report,
        fid_table,
        paper_table,
        plot_context_effect,
        retrieval_table,
    )
    from eval.db import db_path, query
    from eval.grids import draw_run_grids

    database = db_path(workdir)
    results = query(database, "SELECT * FROM results WHERE run_id = ?", [run_id])
    tables = {t.benchmark: paper_table(results, t) for t in PAPER_TABLES}
    tables.update({"retrieval": retrieval_table(results), "cc3m-fid": fid_table(results)})
    for name, rows in tables.items():
        if rows:
            create_table_artifact(
                key=f"bench-{name}", table=rows, description=f"run {run_id}; every number: {database} table results"
            )
    text = build_report(workdir, run_id=run_id, fmt="markdown")
    create_markdown_artifact(key="bench-report", markdown=text)
    reports = workdir / "bench" / "reports"
    plot = plot_context_effect(workdir, reports / "context_effect.png", run_id=run_id)
    grids = draw_run_grids(workdir, run_id, reports)
    claims = build_claims(workdir, run_id=run_id, fmt="markdown")
    create_markdown_artifact(key="claims", markdown=claims)
    return {
        "report": build_report(workdir, run_id=run_id),
        "plot": str(plot) if plot else None,
        "grids": [str(g) for g in grids],
    }


# -- the flow -------------------------------------------------------------------------------------------------------


@flow(name="gill", log_prints=True)
def gill_pipeline(params: PipelineParams = PipelineParams()) -> dict:  # noqa: B008 - pydantic, immutable use
    """GILL end to end (paper sections 3-5): data, adapters, decision classifier, benchmarks, report."""
    from flows.pipeline_support import StageLog, data_sources, locations

    workdir = params.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    storage = _results_block(workdir)
    run = {name: cached(fn, workdir, params.refresh, storage) for name, fn in TASKS.items()}
    log = StageLog(params.stages)
    config = params.gill_config()
    config_json = config.to_json()
    _check_weights(config, log.selected)  # missing weights fail here, before any stage runs

    sources = data_sources(params)
    world = None
    if sources is None:  # the embedded default: the world is every later stage's data, so it is always built
        log.wants("world", selected=True)
        world = log.done("world", run["world"](workdir, _synth(params)))
        sources = _world_sources(world)
    if log.wants("download"):
        options = _download_options(params, config, synthetic=world is not None)
        for split in ("train", "val"):
            urls = Path(sources[f"cc3m_{split}"])
            log.done(f"download {split}", run["download"](workdir, split, urls, file_digest(urls), options))
    if log.wants("precompute"):
        from gill.data.precompute import PrecomputeOptions, image_shards

        options = PrecomputeOptions(batch_size=params.precompute_batch_size, device=params.device)
        for split in ("train", "val"):
            shards = image_shards(split, workdir)
            futures = [
                run["precompute"].submit(s, file_digest(s), split, workdir, config_json, options) for s in shards
            ]
            rows = [f.result() for f in futures]
            _record_precompute(workdir, rows)
            log.done(f"precompute {split}", {"shards": len(rows), "samples": sum(r["count"] for r in rows)})
    features = _feature_fingerprints(workdir)
    if log.wants("train"):
        overrides = {
            k: v
            for k, v in (("steps", params.steps), ("batch_size", params.batch_size), ("seed", params.train_seed))
            if v is not None
        }
        log.done("train", run["train"](workdir, config_json, overrides, params.run_id, features, params.device))
    later = {"index", "candidates", "decision", "vist", "visdial", "cc3m-fid"}
    checkpoint = _checkpoint(workdir, params.run_id) if later & set(log.selected) else None
    if log.wants("index"):
        log.done("index", run["index"](workdir, checkpoint, adapters_id(checkpoint), features))
    if log.wants("candidates"):
        log.done(
            "candidates",
            run["candidates"](
                workdir,
                checkpoint,
                adapters_id(checkpoint),
                params.candidate_limit,
                params.candidate_sd_steps,
                params.device,
            ),
        )
    votes = None
    if log.wants("votes"):
        from flows.stages.candidates import CANDIDATES_DIR

        votes = log.done(
            "votes",
            run["votes"](
                workdir,
                params.votes,
                file_digest(params.votes),
                world is not None,
                params.panel_seed,
                folder_digest(workdir / CANDIDATES_DIR),
            ),
        )
    if log.wants("decision"):
        votes = votes or _votes_source(workdir, params.votes, simulated=world is not None)
        tsv = Path(votes["votes_tsv"])
        log.done(
            "decision",
            run["decision"](
                workdir,
                checkpoint,
                adapters_id(checkpoint),
                str(tsv),
                file_digest(tsv),
                votes["panel"],
                params.decision_steps,
                params.device,
                _decision_head(params, world),
            ),
        )
    bench_run = None
    for benchmark in ("vist", "visdial", "cc3m-fid"):
        if log.wants(benchmark):
            data, digest = _bench_data(benchmark, sources, workdir)
            summary = run["bench"](
                benchmark,
                workdir,
                checkpoint,
                checkpoint_fingerprint(checkpoint),
                data,
                digest,
                _bench_options(params, benchmark),
            )
            bench_run = summary["run_id"]
            log.done(benchmark, summary)
    if log.wants("ablation") and params.ablation_mappers:
        _mapper_ablation(run, log, params, workdir, config, sources, features)
    report = None
    if log.wants("report"):
        from eval.bench_report import latest_run

        run_id = bench_run or latest_run(workdir)
        if run_id is not None:
            report = run["report"](workdir, run_id, _results_digest(workdir, run_id))
            print(report["report"])
    out = {"workdir": str(workdir), "stages": log.outputs, "locations": locations(workdir, checkpoint)}
    if report is not None:
        out["report"] = report["report"]
    print("\n".join(f"{k}: {v}" for k, v in out["locations"].items()))
    return out


TASKS = {
    "world": world_task,
    "download": download_task,
    "precompute": precompute_task,
    "train": train_task,
    "index": index_task,
    "candidates": candidates_task,
    "votes": votes_task,
    "decision": decision_task,
    "bench": bench_task,
    "report": report_task,
}


# -- helpers --------------------------------------------------------------------------------------------------------


def _mapper_ablation(
    run: dict, log: Any, params: PipelineParams, workdir: Path, config: Any, sources: dict, features: list[str]
) -> None:
    """Paper Table 3: a checkpoint per ablation mapper, trained like the main run, scored like its gill-gen."""
    import dataclasses

    overrides = {
        k: v
        for k, v in (("steps", params.steps), ("batch_size", params.batch_size), ("seed", params.train_seed))
        if v is not None
    }
    for kind in params.ablation_mappers:
        mapper = dataclasses.replace(config.adapters.mapper, kind=kind)
        variant = dataclasses.replace(config, adapters=dataclasses.replace(config.adapters, mapper=mapper))
        run_id = f"{params.run_id}-{kind}"
        log.done(
            f"ablation train {kind}",
            run["train"](workdir, variant.to_json(), overrides, run_id, features, params.device, mark_default=False),
        )
        checkpoint = _checkpoint(workdir, run_id)
        for benchmark in ("vist", "cc3m-fid"):
            data, digest = _bench_data(benchmark, sources, workdir)
            options = json.loads(_bench_options(params, benchmark))
            options.update(systems=["gill-gen"], retrieval=False)
            if benchmark == "vist":
                options["settings"] = ["5cap4img"]
            summary = run["bench"](
                benchmark,
                workdir,
                checkpoint,
                checkpoint_fingerprint(checkpoint),
                data,
                digest,
                json.dumps(options, sort_keys=True),
            )
            log.done(f"ablation {benchmark} {kind}", summary)


def _decision_head(params: Any, world: Any) -> str:
    """The head the decision stage saves: the parameter, else bank-aware on the embedded default (a shapes world,
    where the official head's h[IMG0] carries too little to beat chance; docs/judging.md), else official."""
    if params.decision_head is not None:
        return params.decision_head
    return "bank-aware" if world is not None else "official"


def _votes_source(workdir: Path, votes: Path | None, simulated: bool) -> dict:
    """The votes file the decision stage fits on and whose panel it is: ``votes`` when given, else the SIMULATED
    panel's export on the embedded default (written by the votes stage), else the shipped PartiPrompts votes."""
    from annotations.votes import default_votes_path

    if votes is not None or not simulated:
        return {"votes_tsv": str(votes or default_votes_path("alignment")), "panel": "human"}
    from annotations.store import SIMULATED_PANEL
    from eval.decision import store_votes_tsv

    return {"votes_tsv": str(store_votes_tsv(workdir, panel=SIMULATED_PANEL)), "panel": SIMULATED_PANEL}


def _check_weights(config: Any, stages: list[str]) -> None:
    """One error naming every missing backbone and metric model the selected stages need."""
    from eval.metric_models import check_metric_models
    from gill.errors import MissingWeightsError
    from gill.hub import require_backbones

    errors = []
    checks = (
        [lambda: require_backbones(config.backbones, preset=config.preset)]
        if set(stages) - {"download", "votes", "report"}
        else []
    )
    if set(stages) & {"vist", "visdial", "cc3m-fid", "ablation"}:
        checks.append(lambda: check_metric_models(config, need_fid=bool({"cc3m-fid", "ablation"} & set(stages))))
    for check in checks:
        try:
            check()
        except MissingWeightsError as err:
            errors.append(err)
    if errors:
        raise MissingWeightsError(
            f"Missing weights for the selected stages ({', '.join(stages)})",
            [p for e in errors for p in e.problems],
            "\n".join(e.hint for e in errors if e.hint),
        )


def _synth(params: PipelineParams) -> dict[str, int]:
    return {
        "seed": params.world_seed,
        "n_train": params.world_train,
        "n_val": params.world_val,
        "n_stories": params.world_stories,
        "n_dialogs": params.world_dialogs,
    }


def _world_sources(world: dict[str, str] | None) -> dict[str, str]:
    if world is None:
        raise ValueError("the synthetic world is the data source, but its stage was not selected")
    return {
        "cc3m_train": world["cc3m_train_tsv"],
        "cc3m_val": world["cc3m_val_tsv"],
        "vist_sis_json": world["vist_sis_json"],
        "vist_images": world["vist_images_dir"],
        "visdial_json": world["visdial_json"],
        "visdial_images": world["visdial_images_dir"],
    }


def _download_options(params: PipelineParams, config: Any, synthetic: bool) -> dict:
    image_size = params.image_size or (64 if config.preset == "tiny" else 224)
    shard_size = params.shard_size or (100 if synthetic else 10000)
    return {
        "processes": params.processes,
        "threads": params.threads,
        "image_size": image_size,
        "shard_size": shard_size,
        "distributor": params.distributor,
        "timeout": 10 if not synthetic else 5,
        "retries": 2 if not synthetic else 0,
    }


def _record_precompute(workdir: Path, rows: list[dict]) -> None:
    from eval.db import db_path, record_precompute

    record_precompute(db_path(workdir), rows)


def _feature_fingerprints(workdir: Path) -> list[str]:
    """The fingerprint of every feature shard (what training and the bank read)."""
    from gill.data.precompute import feature_dir, read_feature_manifest

    out = []
    for split in ("train", "val"):
        folder = feature_dir(split, workdir)
        for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
            manifest = read_feature_manifest(sub)
            if manifest is not None:
                out.append(f"{split}/{sub.name}:{manifest.get('fingerprint')}:{manifest.get('count')}")
    return out


def _checkpoint(workdir: Path, run_id: str) -> Path:
    from gill.pipeline import resolve_checkpoint

    for name in ("best", "final"):  # as resolve_checkpoint, within the pipeline's own run
        folder = workdir / "runs" / run_id / name
        if (folder / "adapters.safetensors").is_file():
            return folder
    return resolve_checkpoint(workdir)


def _bench_data(benchmark: str, sources: dict[str, str], workdir: Path) -> tuple[dict, str | None]:
    if benchmark == "vist":
        data = {"sis_json": sources["vist_sis_json"], "images": sources["vist_images"]}
        return data, f"{file_digest(Path(data['sis_json']))}:{folder_digest(Path(data['images']))}"
    if benchmark == "visdial":
        data = {"dialogs_json": sources["visdial_json"], "images": sources["visdial_images"]}
        return data, f"{file_digest(Path(data['dialogs_json']))}:{folder_digest(Path(data['images']))}"
    from gill.data.shards import image_split_dir

    return {}, folder_digest(image_split_dir("val", workdir))


def _bench_options(params: PipelineParams, benchmark: str) -> str:
    options: dict[str, Any] = {
        "seeds": params.bench_seeds,
        "limit": params.bench_limit,
        "sd_steps": params.bench_sd_steps,
        "fid_bootstrap": params.fid_bootstrap,
        "device": params.device,
        "progress": True,
    }
    if benchmark == "vist":
        options["settings"] = params.vist_settings
    elif benchmark == "visdial":
        options["settings"] = params.visdial_rounds
    return json.dumps(options, sort_keys=True)


def _results_digest(workdir: Path, run_id: str) -> str:
    from eval.db import db_path, query

    frame = query(db_path(workdir), "SELECT * FROM results WHERE run_id = ? ORDER BY ALL", [run_id])
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
