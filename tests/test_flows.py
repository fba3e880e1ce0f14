"""Prefect flows on a real (temporary) Prefect server: download-cc3m and precompute-targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shard_helpers import split_folders

from flows.store import db_path, query


@pytest.fixture(scope="module")
def prefect_server():
    """A temporary Prefect API server (SQLite) for this module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def test_every_flow_parameter_has_a_description():
    from pydantic import BaseModel

    import flows.params as params

    models = [
        m for m in vars(params).values() if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel
    ]
    assert len(models) >= 6
    for model in models:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_flow_parameters_are_validated_at_the_boundary(tmp_path):
    from pydantic import ValidationError

    from flows.params import DownloadParams

    with pytest.raises(ValidationError) as info:
        DownloadParams(urls=tmp_path / "u.tsv", split="test", workdir=tmp_path, threads=0, colour="red")
    text = str(info.value)
    assert "split" in text and "threads" in text and "colour" in text


@pytest.fixture(scope="module")
def downloaded(prefect_server, small_world, tmp_path_factory) -> Path:
    from flows.download_cc3m import DownloadParams, download_cc3m_flow

    workdir = tmp_path_factory.mktemp("flow-work")
    params = DownloadParams(
        urls=small_world.cc3m_train_tsv,
        split="train",
        workdir=workdir,
        shard_size=6,
        image_size=64,
        threads=4,
        timeout=5,
        retries=0,
    )
    state = download_cc3m_flow(params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["total"] == result["successes"] == small_world.n_train
    return workdir


def test_download_flow_shards_the_world_and_publishes_the_yield(downloaded, small_world):
    from prefect.artifacts import Artifact

    shards = query(db_path(downloaded), "SELECT * FROM download_shards ORDER BY shard")
    assert list(shards["shard"]) == ["00000", "00001", "00002"]  # 16 samples in shards of 6
    assert int(shards["successes"].sum()) == small_world.n_train
    artifact = Artifact.get("cc3m-yield-train")
    assert artifact is not None and "16/16 ok" in (artifact.description or "")
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert sum(r["successes"] for r in rows) == small_world.n_train


def test_precompute_flow_runs_one_task_per_shard_and_skips_on_rerun(downloaded):
    from flows.precompute_targets import PrecomputeParams, precompute_targets_flow

    params = PrecomputeParams(split="train", workdir=downloaded, batch_size=4)
    first = precompute_targets_flow(params)
    assert first == {"shards": 3, "computed": 3, "samples": 16}
    again = precompute_targets_flow(params)
    assert again["computed"] == 0 and again["shards"] == 3
    rows = query(db_path(downloaded), "SELECT shard, count FROM precompute_shards ORDER BY shard")
    assert list(rows["count"]) == [6, 6, 4]


def test_precompute_flow_spreads_over_a_local_dask_cluster(downloaded, tmp_path):
    import shutil

    from prefect_dask import DaskTaskRunner

    from flows.precompute_targets import PrecomputeParams, precompute_targets_flow

    shutil.rmtree(split_folders("train", downloaded).features, ignore_errors=True)
    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    )
    result = precompute_targets_flow.with_options(task_runner=runner)(
        PrecomputeParams(split="train", workdir=downloaded, batch_size=4)
    )
    assert result == {"shards": 3, "computed": 3, "samples": 16}


def test_train_flow_runs_and_publishes_its_metrics(downloaded):
    from prefect.artifacts import Artifact

    from flows.train_adapters import TrainParams, train_adapters_flow
    from gill.data.precompute import PrecomputeOptions, precompute_split
    from gill.presets import get_preset

    precompute_split(
        split_folders("train", downloaded), get_preset("tiny"), PrecomputeOptions(batch_size=8), progress=False
    )
    summary = train_adapters_flow(TrainParams(workdir=downloaded, steps=2, batch_size=8, run_id="flow"))
    assert summary["run_id"] == "flow" and summary["last"]["step"] == 2
    assert Path(summary["curve"]).is_file()
    assert Artifact.get("train-metrics") is not None


def test_candidates_flow_builds_the_bank_then_the_pairs(downloaded):  # uses the run the train-flow test made
    from flows.build_decision_candidates import CandidateParams, build_decision_candidates_flow

    summary = build_decision_candidates_flow(CandidateParams(workdir=downloaded, limit=2, sd_steps=2))
    assert summary["total"] == summary["built"] == 2
    rows = query(db_path(downloaded), "SELECT prompt, gen_image, ret_key FROM decision_candidates ORDER BY prompt_id")
    assert list(rows["prompt"]) == ["bond", "element"] and all((downloaded / p).is_file() for p in rows["gen_image"])
    assert (downloaded / "index").is_dir()


def test_fit_decision_flow_records_figures_and_saves_the_head(downloaded):  # uses the run the train-flow test made
    from flows.fit_decision import DecisionParams, fit_decision_flow

    figures = fit_decision_flow(DecisionParams(workdir=downloaded, steps=30, folds=2))
    assert figures["n_train"] == 600 and figures["n_test"] == 311 and 0.0 <= figures["cv_mean_f1"] <= 1.0
    rows = query(db_path(downloaded), "SELECT protocol, metric FROM decision_eval")
    protocols = set(rows["protocol"])
    assert {"official-600", "human"} <= protocols and any(p.startswith("cv") for p in protocols)
    assert (Path(figures["checkpoint"]) / "decision.safetensors").is_file()
