"""The ``gill`` flow in-process: every stage, artifacts, stage caching, crash resume, Dask for per-shard tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
from shard_helpers import SMALL_PIPELINE, split_folders

from flows.store import db_path, query
from flows.workdir import Workdir


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


def test_pipeline_resumes_after_a_crash_and_reruns_only_what_a_change_touches(prefect_server, tmp_path, monkeypatch):
    from prefect.artifacts import Artifact

    import flows.stages.bench
    from flows.full_pipeline import gill_pipeline
    from flows.params import PipelineParams

    params = PipelineParams(workdir=tmp_path / "w", **SMALL_PIPELINE)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in the visdial benchmark")

    monkeypatch.setattr(flows.stages.bench, "run_visdial", crash)
    failed = gill_pipeline(params, return_state=True)
    assert failed.is_failed()
    database = db_path(params.workdir)
    assert set(query(database, "SELECT DISTINCT benchmark FROM samples").benchmark) == {"vist", "vist-retrieval"}
    monkeypatch.undo()

    resumed = gill_pipeline(params, return_state=True)
    assert resumed.is_completed()
    states = _task_states(resumed.state_details.flow_run_id)
    before = [
        n
        for n in states
        if n.split()[0] in ("synthetic", "download", "precompute", "train", "retrieval", "judging", "votes", "fit")
    ]
    assert before and all(states[n] == "Cached" for n in before), states
    assert states["benchmark vist"] == "Cached"
    assert states["benchmark visdial"] == "Completed" and states["benchmark cc3m-fid"] == "Completed"
    benchmarks = set(query(database, "SELECT DISTINCT benchmark FROM results").benchmark)
    assert benchmarks == {"vist", "vist-retrieval", "visdial", "visdial-retrieval", "cc3m-fid"}
    out = resumed.result()
    assert "Table 1: VIST" in out["report"] and out["locations"]["database (query with SQL)"] == str(database)

    for key in (
        "cc3m-yield-train",
        "train-curve",
        "decision-f1",
        "bench-vist",
        "bench-cc3m-fid",
        "bench-report",
        "claims",
    ):
        artifact = Artifact.get(key)
        assert artifact is not None, key
        assert "gill.duckdb" in (artifact.description or "") + str(artifact.data), key

    # a changed benchmark parameter re-runs that benchmark (and the report) only
    changed = gill_pipeline(params.model_copy(update={"visdial_rounds": [1, 5, 10]}), return_state=True)
    states = _task_states(changed.state_details.flow_run_id)
    rerun = sorted(name for name, state in states.items() if state != "Cached")
    assert rerun == ["benchmark visdial", "report"], states
    settings = query(database, "SELECT DISTINCT setting FROM results WHERE benchmark = 'visdial'")
    assert set(settings.setting) == {"1round", "5rounds", "10rounds"}

    # the mapper ablation trains a linear-mapper checkpoint like the main one and fills claims c1 and c3
    ablated = gill_pipeline(
        params.model_copy(update={"visdial_rounds": [1, 5, 10], "ablation_mappers": ["linear"]}), return_state=True
    )
    assert ablated.is_completed()
    assert (params.workdir / "runs" / "pipeline-linear" / "final" / "adapters.safetensors").is_file()
    assert (
        Workdir(Path(params.workdir)).checkpoint().parent.name == "pipeline"
    )  # the newer ablation run is not the default
    table = query(database, "SELECT mapper, cc3m_fid, vist_clip_sim FROM table_mapper_ablation")
    assert {"gill_mapper", "linear"} <= set(table.mapper) and table.vist_clip_sim.notna().all()
    claims = query(
        database, "SELECT claim_id, holds, ours_b FROM claims WHERE claim_id IN ('c1', 'c3') AND holds != 'not run'"
    )
    assert set(claims.claim_id) == {"c1", "c3"} and claims.ours_b.notna().all()
    assert "Claims of the paper" in ablated.result()["report"]


def test_per_shard_precompute_tasks_run_on_a_local_dask_cluster(prefect_server, tmp_path):
    from prefect_dask import DaskTaskRunner

    from flows.full_pipeline import gill_pipeline
    from flows.params import PipelineParams

    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": False, "dashboard_address": None}
    )
    params = PipelineParams(workdir=tmp_path / "w", stages=["download", "precompute"], **SMALL_PIPELINE)
    out = gill_pipeline.with_options(task_runner=runner)(params)
    assert out["stages"]["precompute train"] == {"shards": 2, "samples": 32}
    assert len(list(split_folders("train", tmp_path / "w").features.iterdir())) == 2


def test_prefect_yaml_names_the_flow_and_deployment_users_run():
    from pathlib import Path

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "prefect.yaml").read_text())
    deployment = spec["deployments"][0]
    assert deployment["name"] == "full-pipeline" and deployment["work_pool"]["name"]
    flow = load_flow_from_entrypoint(str(root / deployment["entrypoint"]))
    assert flow.name == "gill"  # so the deployment is gill/full-pipeline


def test_every_pipeline_stage_is_described_and_bad_sources_are_named(tmp_path):
    from flows.params import STAGES, PipelineParams
    from flows.pipeline_support import data_sources

    assert PipelineParams().stages == list(STAGES)
    with pytest.raises(ValueError) as info:
        data_sources(PipelineParams(cc3m_train_urls=tmp_path / "train.tsv"))
    assert "cc3m_val" in str(info.value) and "vist_sis_json" in str(info.value)


def test_paper_preset_without_weights_fails_at_once_naming_every_missing_model(prefect_server, tmp_path):
    from flows.full_pipeline import gill_pipeline
    from flows.params import PipelineParams
    from gill.errors import MissingWeightsError

    state = gill_pipeline(PipelineParams(preset="paper", workdir=tmp_path / "w"), return_state=True)
    assert state.is_failed()
    with pytest.raises(MissingWeightsError) as info:
        state.result()
    text = str(info.value)
    assert "facebook/opt-6.7b" in text and "openai/clip-vit-large-patch14" in text and "stable-diffusion" in text
    assert "alexnet-owt-7be5be79.pth" in text and "inception-2015-12-05.pt" in text  # metric weights, same error
    assert not (tmp_path / "w" / "world").exists()  # nothing ran before the check


def test_make_demo_entry_point_runs_the_flow_in_process(demo_workdir):
    """``make demo`` runs ``python -m flows.cli demo``: every stage, in process, state under the workdir."""
    workdir, stdout = demo_workdir
    assert "make demo: the full pipeline took" in stdout and "database (query with SQL)" in stdout
    assert len(list((workdir / "data" / "cc3m" / "train").glob("*.tar"))) == 2  # 32 pairs, shards of 16
    assert (workdir / ".prefect" / "home").is_dir()  # Prefect state stays under the workdir
    assert "claims table: gill report" in stdout and "judge them (people): gill annotate add-judge" in stdout


def test_the_figures_line_names_only_the_figures_written(tmp_path):
    from flows.pipeline_support import figures_written

    assert figures_written(tmp_path) == str(tmp_path / "*.png")  # none yet: where they go
    for name in ("decision", "context_effect", "grid_vist_1cap"):
        (tmp_path / f"{name}.png").write_bytes(b"")
    assert figures_written(tmp_path) == str(tmp_path / "{context_effect,decision}.png")  # no mapper_ablation promised
    (tmp_path / "context_effect.png").unlink()
    assert figures_written(tmp_path) == str(tmp_path / "decision.png")
