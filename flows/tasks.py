"""The Prefect tasks of the stages: one task per stage, each a thin call into its runner (:mod:`flows.stages`)
plus the artifacts people read in the Prefect UI. The full flow (``gill``) and the single-stage flows compose
these same tasks.

Tasks take paths, never tensors, and each one's inputs include a fingerprint of what it reads (file hashes, the
checkpoint id, the upstream shards), so under :func:`cached` a completed pipeline re-runs as all-``Cached`` and a
changed input re-runs exactly the stages downstream of it. The download retries (network work; it resumes at its
first incomplete shard), and the tasks that can hang (a stuck download worker, a dead mount under a shard) have a
timeout.
"""

# No ``from __future__ import annotations``: Prefect reads the task signatures.
import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy
from prefect.filesystems import LocalFileSystem

from annotations.store import SIMULATED_PANEL, JudgingStore
from annotations.votes import default_votes_path
from eval.bench import BenchOptions
from flows.stages import bench as bench_stage
from flows.stages import candidates as candidates_stage
from flows.stages import decision as decision_stage
from flows.stages import download as download_stage
from flows.stages import index as index_stage
from flows.stages import precompute as precompute_stage
from flows.stages import report as report_stage
from flows.stages import train as train_stage
from flows.stages import votes as votes_stage
from flows.stages import world as world_stage
from flows.stages.bench_report import PAPER_TABLES, fid_table, paper_table, retrieval_table
from flows.stages.decision import InsufficientLabelsError, store_votes_tsv
from flows.stages.html_report import html_index
from flows.store import query
from flows.workdir import Workdir
from gill import checkpoint as checkpoint_format
from gill import retrieval
from gill.config import GILLConfig
from gill.data import precompute as feature_format
from gill.data.precompute import PrecomputeOptions
from gill.retrieval import checkpoint_id
from gill.synth import SynthConfig
from gill.utils.io import sha256_file

CACHE_DIR = ".prefect"

DOWNLOAD_RETRIES = 2
"""A failed download task runs again (it resumes at its first incomplete shard)."""
DOWNLOAD_TIMEOUT_S = 24 * 3600
"""A download task that runs longer than this is stopped (a hung img2dataset worker)."""
SHARD_TIMEOUT_S = 2 * 3600
"""A precompute task (one shard) that runs longer than this is stopped (e.g. a dead network mount)."""


# -- caching --------------------------------------------------------------------------------------------------------


def results_block(workdir: Path) -> Any:
    """A saved LocalFileSystem block for this workdir's task results (Prefect requires saved result storage)."""

    folder = (workdir / CACHE_DIR / "results").resolve()
    name = "gill-results-" + hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    block = LocalFileSystem(basepath=str(folder))
    block.save(name, overwrite=True)
    return block


LIBRARY_FORMATS = {
    "checkpoint": checkpoint_format.FORMAT_VERSION,
    "feature shards": feature_format.FORMAT_VERSION,
    "retrieval bank": retrieval.FORMAT_VERSION,
}
"""The versions of the files the stages write through the library: a new version invalidates every cached stage
(the task's source alone does not change when the library's format does, and a stale file would be kept)."""


def _library_formats(context: Any, parameters: dict[str, Any]) -> str:
    return ",".join(f"{name}={version}" for name, version in sorted(LIBRARY_FORMATS.items()))


def cached(fn: Any, workdir: Path, refresh: bool, storage: Any) -> Any:
    """``fn`` keyed on inputs, source and the library's file formats, with its cache records and results under
    ``workdir/.prefect``."""
    formats = CacheKeyFnPolicy(cache_key_fn=_library_formats)
    policy = (INPUTS + TASK_SOURCE + formats).configure(key_storage=str((workdir / CACHE_DIR / "cache").resolve()))
    return fn.with_options(cache_policy=policy, persist_result=True, result_storage=storage, refresh_cache=refresh)


def file_digest(path: Path | None) -> str | None:
    """sha256 of a file (None for None): what a stage keys on besides the path."""
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
    return checkpoint_id(checkpoint)


def checkpoint_fingerprint(checkpoint: Path) -> str:
    """The checkpoint id plus its decision head, when it has one (what the benchmarks' ``gill`` system uses)."""
    head = checkpoint / "decision.safetensors"
    return adapters_id(checkpoint) + (":" + (file_digest(head) or "")[:16] if head.is_file() else "")


# -- stage tasks ----------------------------------------------------------------------------------------------------


@task(task_run_name="synthetic world")
def world_task(workdir: Path, synth: dict[str, int]) -> dict[str, str]:
    """Build (or reuse) the synthetic shapes world: the embedded default data (``gill data synth``)."""
    world = world_stage.run(Workdir.at(workdir), SynthConfig(**synth))
    return {k: str(v) for k, v in world.to_dict().items()}


@task(
    task_run_name="download cc3m {split}",
    retries=DOWNLOAD_RETRIES,
    retry_delay_seconds=30,
    timeout_seconds=DOWNLOAD_TIMEOUT_S,
)
def download_task(workdir: Path, split: str, urls: Path, urls_sha256: str | None, options: dict) -> dict:
    """img2dataset over one url list into webdataset shards; the yield goes to DuckDB ``download_shards``."""
    wd = Workdir.at(workdir)
    report = download_stage.run(wd, split, urls, download_stage.DownloadOptions(**options), progress=False)
    create_table_artifact(
        key=f"cc3m-yield-{split}",
        table=[{**r} for r in report.shard_rows()],
        description=f"{report.summary().splitlines()[0]}; query {wd.database} "
        "tables download_shards, download_failures",
    )
    print(report.summary().splitlines()[0])
    return {"split": split, "total": report.total, "successes": report.successes, "database": str(wd.database)}


@task(task_run_name="precompute {split} shard {shard_tar.stem}", timeout_seconds=SHARD_TIMEOUT_S)
def precompute_task(
    shard_tar: Path, shard_sha256: str, split: str, workdir: Path, config_json: str, options: PrecomputeOptions
) -> dict:
    """Frozen targets of one image shard (one task per shard, so a Dask task runner can spread them)."""
    encoders = precompute_stage.encoders_for(config_json, options)
    result = precompute_stage.run_shard(Workdir.at(workdir), shard_tar, split, encoders, options)
    return {**result.row(), "skipped": result.skipped}


@task(task_run_name="train adapters {run_id}")
def train_task(
    workdir: Path,
    config_json: str,
    overrides: dict,
    run_id: str | None,
    features: list[str],
    device: str,
    mark_default: bool = True,
    resume: bool | str = "auto",
) -> dict:
    """Train (or resume, or recognise as finished) the adapters; the curve summary becomes an artifact."""
    wd = Workdir.at(workdir)
    options = train_stage.TrainOptions(
        run_id=run_id,
        resume=resume,
        device=device,
        overrides=overrides,
        mark_default=mark_default,
        data_fingerprint=hashlib.sha256("\n".join(features).encode()).hexdigest(),  # never resume onto other data
    )
    outcome = train_stage.run(wd, GILLConfig.from_json(config_json), options)
    create_table_artifact(
        key="train-curve",
        table=outcome.curve,
        description=f"run {outcome.run_id}: first and last logged values of each loss and the last "
        f"validation; every step in {wd.database} table train_metrics",
    )
    return {
        "run_id": outcome.run_id,
        "run_dir": str(outcome.run_dir),
        "status": outcome.status,
        "steps": outcome.steps,
        "curve": outcome.curve,
        "loss_curve": str(outcome.loss_curve),
        "last": outcome.result.history[-1] if outcome.result and outcome.result.history else {},
        "validations": outcome.result.validations if outcome.result else [],
        "best_t2i_r1": outcome.result.best_t2i_r1 if outcome.result else None,
    }


@task(task_run_name="retrieval bank")
def index_task(workdir: Path, checkpoint: Path, checkpoint_id: str, features: list[str]) -> dict:
    """Embed the training images with the checkpoint's retrieval head (``gill index build``)."""
    info = index_stage.run(Workdir.at(workdir), checkpoint)
    return {"bank": str(info.path), "images": info.count, "approximate": info.approximate}


@task(task_run_name="judging candidates")
def candidates_task(workdir: Path, checkpoint: Path, checkpoint_id: str, options: dict) -> dict:
    """SD-baseline and top-bank images per prompt (world prompts on the embedded default, else PartiPrompts), loaded
    into the judging store with their images, open to people (``gill annotate build``, then ``serve``)."""
    wd = Workdir.at(workdir)
    s = candidates_stage.run(wd, checkpoint, candidates_stage.CandidateOptions(**options))
    store = JudgingStore(wd.root)
    summary = {
        "total": s.total,
        "built": s.built,
        "skipped": s.skipped,
        "database": str(s.database),
        "images": str(s.images_dir),
        "store": str(store.path),
        "judgeable_items": store.judgeable_items(),
    }
    create_markdown_artifact(
        key="decision-candidates",
        markdown=(
            f"{summary['total']} prompts ({summary['built']} built, {summary['skipped']} already done); images in "
            f"`{summary['images']}`, rows in `{summary['database']}` table `decision_candidates`"
        ),
    )
    return summary


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
    if votes is not None or not simulated:
        return votes_source(workdir, votes, simulated)
    summary = votes_stage.run(Workdir.at(workdir), votes_stage.PanelConfig(seed=panel_seed))
    return {
        **votes_source(workdir, votes, simulated),
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
    wd = Workdir.at(workdir)
    who = "human" if panel == "human" else f"{panel.upper()} panel (answer-key judges, not people)"
    try:
        fits = decision_stage.run(wd, checkpoint, Path(votes_tsv), panel=panel, head=head, steps=steps, device=device)
    except InsufficientLabelsError as err:  # a small run: the pipeline goes on, the gill system always generates
        create_markdown_artifact(
            key="decision-f1",
            markdown=f"decision classifier **not fitted** on {votes_tsv} "
            f"({who} votes): {err}; query {wd.database} table decision_eval",
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
        f"{wd.database} table decision_eval",
    )
    out = {k: v for k, v in figures.items() if isinstance(v, (int, float, str, bool)) or v is None}
    out["saved_head"] = head
    if aware is not None:
        out["bank_aware_cv_mean_f1"] = aware.cv_mean_f1
        out["bank_aware_official_test_f1"] = aware.official_test_f1
    return out


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
    """One benchmark (``gill bench vist|visdial|cc3m-fid``); resumes at its first unscored sample. With ``workers``
    > 1 in the options, that many local processes score the samples, then this task merges their rows and computes
    the results (:mod:`flows.stages.bench_shards`)."""
    raw = json.loads(options_json)
    settings = raw.pop("settings", None)
    workers = raw.pop("workers", 1)
    options = BenchOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    summaries = bench_stage.run(
        Workdir.at(workdir),
        benchmark,
        checkpoint=checkpoint,
        data=data,
        options=options,
        settings=settings,
        workers=workers,
    )
    return {
        "run_id": summaries[0].run_id,
        "scored": sum(s.scored for s in summaries),
        "skipped": sum(s.skipped for s in summaries),
        "resumed": sum(s.resumed for s in summaries),
    }


@task(task_run_name="report")
def report_task(workdir: Path, run_id: str, results_digest: str) -> dict:
    """The paper tables (printed and as artifacts), the claims, the figures and the web page of it all and of every
    sample (``bench/reports/html/index.html``)."""
    wd = Workdir.at(workdir)
    results = query(wd.database, "SELECT * FROM results WHERE run_id = ?", [run_id])
    tables = {t.benchmark: paper_table(results, t) for t in PAPER_TABLES}
    tables.update({"retrieval": retrieval_table(results), "cc3m-fid": fid_table(results)})
    for name, rows in tables.items():
        if rows:
            create_table_artifact(
                key=f"bench-{name}", table=rows, description=f"run {run_id}; every number: {wd.database} table results"
            )
    outcome = report_stage.run(wd, run_id, html=wd.html_report)
    create_markdown_artifact(key="bench-report", markdown=outcome.markdown)
    create_markdown_artifact(key="claims", markdown=outcome.claims)
    return {
        "report": outcome.report,
        "plot": str(outcome.plot) if outcome.plot else None,
        "grids": [str(g) for g in outcome.grids],
        "figures": {name: str(png) for name, png in outcome.figures.items()},
        "html": str(html_index(wd.html_report)),
    }


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
"""Every stage task, by the name the full flow and its cache use."""


# -- helpers --------------------------------------------------------------------------------------------------------


def votes_source(workdir: Path, votes: Path | None, simulated: bool) -> dict:
    """The votes file the decision stage fits on and whose panel it is: ``votes`` when given, else the SIMULATED
    panel's export on the embedded default (written by the votes stage), else the shipped PartiPrompts votes."""
    if votes is not None or not simulated:
        return {"votes_tsv": str(votes or default_votes_path("alignment")), "panel": "human"}
    return {"votes_tsv": str(store_votes_tsv(workdir, panel=SIMULATED_PANEL)), "panel": SIMULATED_PANEL}


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
