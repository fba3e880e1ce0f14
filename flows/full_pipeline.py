"""Flow ``gill`` (deployment ``gill/full-pipeline``): GILL end to end, one cached task per stage.

world -> download -> precompute (one task per shard) -> train -> retrieval bank -> judging candidates -> votes ->
decision classifier -> VIST / VisDial / CC3M-FID benchmarks -> report. Each task (:mod:`flows.tasks`) is a thin
call into its stage's runner (:mod:`flows.stages`, what the ``gill`` command calls too) and takes paths, never
tensors.

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
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow

from eval.metric_models import check_metric_models
from flows.params import PipelineParams
from flows.pipeline_support import StageLog, data_sources, locations
from flows.stages import precompute as precompute_stage
from flows.stages.bench_report import latest_run
from flows.stages.candidates import CANDIDATES_DIR
from flows.store import db_path, query
from flows.tasks import (
    TASKS,
    adapters_id,
    cached,
    checkpoint_fingerprint,
    file_digest,
    folder_digest,
    results_block,
    votes_source,
)
from flows.workdir import Workdir
from gill.data.precompute import PrecomputeOptions, read_feature_manifest
from gill.data.shards import complete_image_shards
from gill.errors import MissingWeightsError
from gill.hub import require_backbones

# -- the flow -------------------------------------------------------------------------------------------------------


@flow(name="gill", log_prints=True)
def gill_pipeline(params: PipelineParams = PipelineParams()) -> dict:  # noqa: B008 - pydantic, immutable use
    """GILL end to end (paper sections 3-5): data, adapters, decision classifier, benchmarks, report."""

    wd = Workdir.at(params.workdir)
    workdir = wd.root
    workdir.mkdir(parents=True, exist_ok=True)
    storage = results_block(workdir)
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
        options = PrecomputeOptions(batch_size=params.precompute_batch_size, device=params.device)
        for split in ("train", "val"):
            shards = complete_image_shards(wd.images(split))
            futures = [
                run["precompute"].submit(s, file_digest(s), split, workdir, config_json, options) for s in shards
            ]
            rows = [f.result() for f in futures]
            precompute_stage.record(wd, rows)
            log.done(f"precompute {split}", {"shards": len(rows), "samples": sum(r["count"] for r in rows)})
    features = _feature_fingerprints(wd)
    if log.wants("train"):
        overrides = {
            k: v
            for k, v in (("steps", params.steps), ("batch_size", params.batch_size), ("seed", params.train_seed))
            if v is not None
        }
        log.done("train", run["train"](workdir, config_json, overrides, params.run_id, features, params.device))
    later = {"index", "candidates", "decision", "vist", "visdial", "cc3m-fid"}
    checkpoint = wd.run_checkpoint(params.run_id) if later & set(log.selected) else None
    if log.wants("index"):
        log.done("index", run["index"](workdir, checkpoint, adapters_id(checkpoint), features))
    if log.wants("candidates"):
        log.done(
            "candidates",
            run["candidates"](
                workdir,
                checkpoint,
                adapters_id(checkpoint),
                {"limit": params.candidate_limit, "sd_steps": params.candidate_sd_steps, "device": params.device},
            ),
        )
    votes = None
    if log.wants("votes"):
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
        votes = votes or votes_source(workdir, params.votes, simulated=world is not None)
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
            data, digest = _bench_data(benchmark, sources, wd)
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
        run_id = bench_run or latest_run(workdir)
        if run_id is not None:
            report = run["report"](workdir, run_id, _results_digest(workdir, run_id))
            print(report["report"])
    out = {"workdir": str(workdir), "stages": log.outputs, "locations": locations(workdir, checkpoint)}
    if report is not None:
        out["report"] = report["report"]
    print("\n".join(f"{k}: {v}" for k, v in out["locations"].items()))
    return out


# -- helpers --------------------------------------------------------------------------------------------------------


def _mapper_ablation(
    run: dict, log: Any, params: PipelineParams, workdir: Path, config: Any, sources: dict, features: list[str]
) -> None:
    """Paper Table 3: a checkpoint per ablation mapper, trained like the main run, scored like its gill-gen."""

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
        checkpoint = Workdir.at(workdir).run_checkpoint(run_id)
        for benchmark in ("vist", "cc3m-fid"):
            data, digest = _bench_data(benchmark, sources, Workdir(workdir))
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


def _check_weights(config: Any, stages: list[str]) -> None:
    """One error naming every missing backbone and metric model the selected stages need."""

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


def _feature_fingerprints(workdir: Workdir) -> list[str]:
    """The fingerprint of every feature shard (what training and the bank read)."""

    out = []
    for split in ("train", "val"):
        folder = workdir.features(split)
        for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
            manifest = read_feature_manifest(sub)
            if manifest is not None:
                out.append(f"{split}/{sub.name}:{manifest.get('fingerprint')}:{manifest.get('count')}")
    return out


def _bench_data(benchmark: str, sources: dict[str, str], workdir: Workdir) -> tuple[dict, str | None]:
    if benchmark == "vist":
        data = {"sis_json": sources["vist_sis_json"], "images": sources["vist_images"]}
        return data, f"{file_digest(Path(data['sis_json']))}:{folder_digest(Path(data['images']))}"
    if benchmark == "visdial":
        data = {"dialogs_json": sources["visdial_json"], "images": sources["visdial_images"]}
        return data, f"{file_digest(Path(data['dialogs_json']))}:{folder_digest(Path(data['images']))}"

    return {}, folder_digest(workdir.images("val"))


def _bench_options(params: PipelineParams, benchmark: str) -> str:
    options: dict[str, Any] = {
        "seeds": params.bench_seeds,
        "limit": params.bench_limit,
        "sd_steps": params.bench_sd_steps,
        "gen_batch_size": params.bench_gen_batch_size,
        "fid_bootstrap": params.fid_bootstrap,
        "device": params.device,
        "progress": True,
        "workers": params.bench_workers,
    }
    if benchmark == "vist":
        options["settings"] = params.vist_settings
    elif benchmark == "visdial":
        options["settings"] = params.visdial_rounds
    return json.dumps(options, sort_keys=True)


def _results_digest(workdir: Path, run_id: str) -> str:

    frame = query(db_path(workdir), "SELECT * FROM results WHERE run_id = ? ORDER BY ALL", [run_id])
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
