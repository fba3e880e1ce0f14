"""Benchmarks on the synthetic world with a tiny trained checkpoint: rows, statistics, skips, resume, reports."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from shard_helpers import setup_in, split_folders, trained_workdir, world_samples

from eval.bench import BenchOptions
from eval.bench_systems import SYSTEMS
from flows.stages.bench import BenchSession, run_cc3m_fid, run_mapper_ablation, run_visdial, run_vist
from flows.stages.decision import save_head_into_checkpoint
from flows.store import db_path, query
from gill.adapters import DecisionHead
from gill.utils.paths import resolve_stored

ALL = ("gill", "gill-gen", "gill-ret", "gill-oracle", "sd", "clip-retrieval", "fromage-retrieval")
FAST = dict(sd_steps=2, n_boot=200, fid_bootstrap=20, write_every=2, progress=False)


@pytest.fixture(scope="module")
def bench_work(tmp_path_factory, small_world, tiny_config) -> Path:
    """A trained tiny checkpoint with its bank, plus the world's CC3M val pairs as image shards."""
    from gill.data.shards import write_image_shard

    root = trained_workdir(
        tmp_path_factory.mktemp("bench-work"), small_world, tiny_config, steps=6, run_id="b", bank=True
    )
    write_image_shard(split_folders("val", root).images / "00000.tar", world_samples(small_world, 8, split="val"))
    head = DecisionHead(tiny_config_dims(tiny_config))  # a classifier that always prefers retrieval: p_ret = 0.731
    torch.nn.init.zeros_(head.linear.weight)
    head.linear.bias.data = torch.tensor([0.0, 1.0])
    save_head_into_checkpoint(root / "runs" / "b" / "final", head)
    return root


def tiny_config_dims(config) -> int:
    from gill.factory import derive_dims

    return derive_dims(config).lm_hidden


@pytest.fixture(scope="module")
def full_run(bench_work, small_world):
    """Every benchmark, setting and system, two seeds (glide requested, so it is reported as unsupported)."""
    options = BenchOptions(seeds=(42, 43), systems=(*ALL, "glide"), **FAST)
    vist = run_vist(bench_work, small_world.vist_sis_json, small_world.vist_images_dir, options=options)
    visdial = run_visdial(bench_work, small_world.visdial_json, small_world.visdial_images_dir, options=options)
    fid = run_cc3m_fid(bench_work, options=dataclasses.replace(options, systems=("gill-gen", "sd")))
    return {"vist": vist, "visdial": visdial, "fid": fid, "run_id": fid.run_id, "options": options}


def _samples(work: Path, run_id: str):
    return query(db_path(work), "SELECT * FROM samples WHERE run_id = ?", [run_id])


def _results(work: Path, run_id: str):
    return query(db_path(work), "SELECT * FROM results WHERE run_id = ?", [run_id])


def test_every_benchmark_setting_and_system_writes_sample_and_result_rows(bench_work, full_run):
    samples = _samples(bench_work, full_run["run_id"])
    ok = samples[samples.status == "ok"]
    got = set(zip(ok.benchmark, ok.setting, ok.system, strict=True))
    expected = {("vist", s, m) for s in ("1cap", "5cap", "5cap4img") for m in ALL}
    expected |= {("visdial", s, m) for s in ("1round", "5rounds", "10rounds") for m in ALL}
    expected |= {
        (b, s, m)
        for b, ss in (
            ("vist-retrieval", ("1cap", "5cap", "5cap4img")),
            ("visdial-retrieval", ("1round", "5rounds", "10rounds")),
        )
        for s in ss
        for m in ("fromage-retrieval", "clip-retrieval")
    }
    expected |= {("cc3m-fid", "val", m) for m in ("gill-gen", "sd")}
    assert got == expected
    # 4 stories, 4 dialogs, 8 val pairs; seed-free systems once, the others once per seed
    for (benchmark, setting, system), group in ok.groupby(["benchmark", "setting", "system"]):
        n = {"vist": 4, "visdial": 4, "cc3m-fid": 8}.get(benchmark, 4)
        seeds = 2 if benchmark in ("vist", "visdial", "cc3m-fid") and SYSTEMS[system].uses_seed else 1
        assert len(group) == n * seeds, (benchmark, setting, system)
        if benchmark in ("vist", "visdial", "cc3m-fid"):
            assert group.clip_sim.between(-1, 1).all() and (group.lpips >= 0).all()
            assert all(resolve_stored(p, bench_work).is_file() for p in group.generated_path)
            assert all(resolve_stored(p, bench_work).is_file() for p in group.reference_path)
    results = _results(bench_work, full_run["run_id"])
    metrics = set(zip(results.benchmark, results.system, results.metric, strict=True))
    assert {
        ("vist", "gill", "clip_sim"),
        ("vist", "sd", "lpips"),
        ("visdial", "gill-oracle", "clip_sim"),
        ("vist-retrieval", "fromage-retrieval", "recall@10"),
        ("visdial-retrieval", "clip-retrieval", "recall@1"),
        ("cc3m-fid", "gill-gen", "fid"),
        ("cc3m-fid", "sd", "fid"),
        ("cc3m-fid", "sd", "clip_sim"),
    } <= metrics
    assert "glide" not in set(results.system)
    unsupported = query(db_path(bench_work), "SELECT * FROM unsupported_systems WHERE run_id = ?", [full_run["run_id"]])
    assert set(unsupported.system) == {"glide"} and unsupported.reason.str.contains("diffusers").all()


def test_paths_inside_the_workdir_are_stored_relative_to_it_and_others_absolute(bench_work, small_world, full_run):
    samples = _samples(bench_work, full_run["run_id"])
    ok = samples[samples.status == "ok"]
    generated = ok[ok.benchmark.isin(["vist", "visdial", "cc3m-fid"])]
    assert generated.generated_path.str.startswith(f"bench/{full_run['run_id']}/").all()
    cc3m = ok[ok.benchmark == "cc3m-fid"]  # the references are copies saved under the run's folder
    assert cc3m.reference_path.str.startswith(f"bench/{full_run['run_id']}/cc3m-fid/val/reference/").all()
    vist = ok[ok.benchmark == "vist"]  # the user's VIST images live outside the workdir: absolute
    assert not Path(small_world.vist_images_dir).is_relative_to(bench_work)
    assert vist.reference_path.map(lambda p: Path(p).is_absolute()).all()
    context = [p for value in vist.context_paths for p in json.loads(value)]
    assert context and all(Path(p).is_absolute() and Path(p).is_file() for p in context)
    runs = query(db_path(bench_work), "SELECT checkpoint FROM runs WHERE run_id = ?", [full_run["run_id"]])
    assert list(runs.checkpoint) == ["runs/b/final"]


def test_intervals_contain_the_mean_and_seed_statistics_are_recorded(bench_work, full_run):
    results = _results(bench_work, full_run["run_id"])
    with_ci = results[results.ci_low.notna()]
    assert len(with_ci) >= 100
    assert (with_ci.ci_low <= with_ci["mean"] + 1e-12).all() and (with_ci["mean"] <= with_ci.ci_high + 1e-12).all()
    vist = results[results.benchmark == "vist"].set_index(["setting", "system", "metric"])
    assert vist.loc[("5cap", "sd", "clip_sim"), "n_seeds"] == 2
    assert vist.loc[("5cap", "sd", "clip_sim"), "seed_std"] >= 0
    assert vist.loc[("5cap", "gill-ret", "clip_sim"), "n_seeds"] == 1
    # the mean is the mean over samples of each sample's mean over seeds, recomputed here from the sample rows
    samples = _samples(bench_work, full_run["run_id"])
    own = samples[(samples.benchmark == "vist") & (samples.setting == "5cap") & (samples.system == "sd")]
    expected = own.groupby("sample_id").clip_sim.mean().mean()
    assert vist.loc[("5cap", "sd", "clip_sim"), "mean"] == pytest.approx(expected)
    fid = results[(results.metric == "fid")].set_index("system")
    assert (fid["mean"] > 0).all() and (fid.n == 8).all() and (fid.n_seeds == 2).all()
    assert (fid.ci_low <= fid.ci_high).all()
    recall = results[results.metric.str.startswith("recall@")]
    assert (recall.pool_size == 4).all()
    r1, r10 = (
        recall[recall.metric == m].set_index(["benchmark", "setting", "system"])["mean"]
        for m in ("recall@1", "recall@10")
    )
    assert (r10 >= r1).all() and (r10 == 1.0).all()  # a pool of 4: every true image is in the top 10


def test_metric_models_are_named_on_every_result_row(bench_work, full_run):
    results = _results(bench_work, full_run["run_id"])
    assert results.metric_model.notna().all()
    lpips = set(results[results.metric == "lpips"].metric_model)
    fid = set(results[results.metric == "fid"].metric_model)
    assert len(lpips) == 1 and "random" in lpips.pop().lower()
    assert len(fid) == 1 and "inception" not in fid.pop().lower().replace("not inception", "")


def test_oracle_takes_the_better_of_generation_and_retrieval(bench_work, full_run):
    samples = _samples(bench_work, full_run["run_id"])
    vist = samples[(samples.benchmark == "vist") & (samples.seed == 42) & (samples.status == "ok")]
    table = vist.pivot_table(index=["setting", "sample_id"], columns="system", values="clip_sim")
    assert np.allclose(table["gill-oracle"], np.maximum(table["gill-gen"], table["gill-ret"]))
    gill = vist[vist.system == "gill"]
    assert set(gill.decision) == {"ret"} and np.allclose(gill.p_ret, 1 / (1 + np.exp(-1.0)))  # the installed head
    ret = vist[vist.system == "gill-ret"].set_index(["setting", "sample_id"])
    chosen = gill.set_index(["setting", "sample_id"])
    assert (chosen.ret_key == ret.ret_key.loc[chosen.index]).all()
    assert np.allclose(chosen.clip_sim, ret.clip_sim.loc[chosen.index])


def test_fromage_retrieval_equals_gill_retrieve_only(bench_work, full_run):
    """Two code paths (one LM pass vs cached forced decoding) must pick the same bank image."""
    samples = _samples(bench_work, full_run["run_id"])
    own = samples[samples.benchmark.isin(["vist", "visdial"]) & samples.system.isin(["gill-ret", "fromage-retrieval"])]
    keys = own.pivot_table(
        index=["benchmark", "setting", "sample_id"], columns="system", values="ret_key", aggfunc="first"
    )
    assert len(keys) == 24 and (keys["gill-ret"] == keys["fromage-retrieval"]).all()


def test_clip_similarity_agrees_with_an_independent_computation(bench_work, full_run, tiny_config):
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    samples = _samples(bench_work, full_run["run_id"])
    rows = samples[(samples.benchmark == "vist") & (samples.status == "ok")].head(6)
    from gill.hub import resolve_model_id

    folder = resolve_model_id(tiny_config.backbones.clip_metric.id)
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    for row in rows.itertuples():
        paths = [resolve_stored(p, bench_work) for p in (row.generated_path, row.reference_path)]
        images = [Image.open(p).convert("RGB") for p in paths]
        with torch.no_grad():
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            pooled = model.vision_model(pixel_values=pixels).pooler_output
            features = model.visual_projection(pooled)
        expected = torch.nn.functional.cosine_similarity(features[0], features[1], dim=0).item()
        assert row.clip_sim == pytest.approx(expected, abs=1e-4)


def test_rerun_resumes_and_a_crash_loses_only_unwritten_rows(bench_work, small_world, full_run):
    options = full_run["options"]
    again = run_vist(bench_work, small_world.vist_sis_json, small_world.vist_images_dir, options=options)
    assert again[0].scored == 0 and again[0].resumed == full_run["vist"][0].scored
    assert again[1].scored == 0 and again[1].resumed > 0  # retrieval pools unchanged: reused
    run_id = full_run["run_id"]
    import duckdb

    with duckdb.connect(str(db_path(bench_work))) as con:  # as if a crash lost one story's rows
        con.execute(
            "DELETE FROM samples WHERE run_id = ? AND benchmark = 'vist' AND setting = '1cap' AND "
            "sample_id IN (SELECT DISTINCT sample_id FROM samples WHERE benchmark = 'vist' LIMIT 1)",
            [run_id],
        )
    deleted = 7 + 4  # 7 systems at seed 42, the 4 seed-dependent ones at seed 43
    resumed = run_vist(
        bench_work, small_world.vist_sis_json, small_world.vist_images_dir, options=options, settings=("1cap",)
    )
    assert resumed[0].scored == deleted


def test_missing_and_unreadable_images_are_skipped_and_counted(bench_work, small_world, tmp_path):
    from eval.bench_data import read_vist

    images = tmp_path / "images"
    shutil.copytree(small_world.vist_images_dir, images)
    stories = read_vist(small_world.vist_sis_json, images)
    (images / f"{stories[0].photo_ids[-1]}.jpg").unlink()  # story 0: the target is gone
    (images / f"{stories[1].photo_ids[0]}.jpg").write_bytes(b"not a jpeg")  # story 1: first context photo broken
    options = BenchOptions(seeds=(42,), systems=("gill-gen", "sd"), run_id="skips", **FAST)
    vist, retrieval = run_vist(bench_work, small_world.vist_sis_json, images, options=options)
    samples = _samples(bench_work, "skips")
    skipped = samples[samples.status == "skipped"]
    assert set(skipped[skipped.setting == "1cap"].sample_id) == {stories[0].story_id}
    assert set(skipped[skipped.setting == "5cap4img"].sample_id) == {stories[0].story_id, stories[1].story_id}
    assert skipped.skip_reason.str.contains("not found").any() and skipped.skip_reason.str.contains("jpg").all()
    results = _results(bench_work, "skips").set_index(["benchmark", "setting", "system", "metric"])
    assert results.loc[("vist", "1cap", "sd", "clip_sim"), "n_skipped"] == 1
    assert results.loc[("vist", "5cap4img", "gill-gen", "clip_sim"), "n_skipped"] == 2
    assert results.loc[("vist", "5cap4img", "gill-gen", "clip_sim"), "n"] == 2
    assert results.loc[("vist-retrieval", "5cap4img", "fromage-retrieval", "recall@1"), "pool_size"] == 2
    assert vist.skipped == 1 * 2 + 1 * 2 + 2 * 2  # per setting: skipped samples x systems


def test_report_prints_paper_tables_runs_user_sql_and_draws_the_context_figure(bench_work, full_run, capsys):
    from PIL import Image

    from flows.command.parser import main

    plot = bench_work / "ctx.png"
    assert main(["report", "--workdir", str(bench_work), "--run-id", full_run["run_id"], "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for text in (
        "Table 1: VIST",
        "Table 2: VisDial",
        "5 caps, 4 images",
        "10 rounds",
        "gill-oracle",
        "CC3M FID",
        "R@10",
        "not run: glide",
    ):
        assert text in out
    with Image.open(plot) as image:  # the matplotlib figure at --plot, its PDF beside it, both named in the output
        assert image.format == "PNG" and min(image.size) >= 400
    assert plot.with_suffix(".pdf").is_file() and str(plot) in out
    sql = (
        f"SELECT system, count(*) AS n FROM samples WHERE run_id = '{full_run['run_id']}' AND benchmark = 'vist' "
        "AND status = 'ok' GROUP BY system"
    )
    assert main(["report", "--workdir", str(bench_work), "--sql", sql, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "system,n" and dict(line.split(",") for line in lines[1:])["sd"] == str(4 * 3 * 2)
    assert main(["report", "--workdir", str(bench_work), "--sql", "SELECT * FROM nowhere"]) == 2
    assert "the SQL query failed" in capsys.readouterr().err
    table1 = query(db_path(bench_work), "SELECT * FROM table1_vist WHERE run_id = ?", [full_run["run_id"]])
    assert list(table1.system[:2]) == ["sd", "clip-retrieval"] and table1.clip_5cap4img.notna().all()


def test_cli_bench_vist_runs_and_rejects_bad_input(bench_work, small_world, capsys):
    from flows.command.parser import main

    args = [
        "bench",
        "vist",
        "--workdir",
        str(bench_work),
        "--sis-json",
        str(small_world.vist_sis_json),
        "--images",
        str(small_world.vist_images_dir),
        "--settings",
        "1cap",
        "--systems",
        "sd",
        "--limit",
        "2",
        "--sd-steps",
        "2",
        "--no-progress",
        "--run-id",
        "cli",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vist: 2 sample rows scored" in out and "Table 1" in out
    bad = tmp = bench_work / "bad.json"
    tmp.write_text(json.dumps({"annotations": [[{"story_id": "1"}], "oops"]}))
    assert main([*args[:4], "--sis-json", str(bad), *args[6:]]) == 2
    err = capsys.readouterr().err
    assert "annotations[0]: missing photo_flickr_id" in err and "annotations[1]" in err
    assert main([*args, "--seeds", "1,1"]) == 2
    assert "seeds" in capsys.readouterr().err


def test_mapper_ablation_table_compares_checkpoints(bench_work, small_world, tiny_config):

    config = dataclasses.replace(
        tiny_config,
        adapters=dataclasses.replace(
            tiny_config.adapters, mapper=dataclasses.replace(tiny_config.adapters.mapper, kind="linear")
        ),
        train=dataclasses.replace(tiny_config.train, steps=4, batch_size=8, warmup_steps=1, log_every=2),
    )
    setup_in(config, bench_work, run_id="lin").train()
    checkpoints = [bench_work / "runs" / "b" / "final", bench_work / "runs" / "lin" / "final"]
    options = BenchOptions(seeds=(42,), limit=4, **FAST)
    summaries = run_mapper_ablation(
        bench_work, checkpoints, sis_json=small_world.vist_sis_json, images=small_world.vist_images_dir, options=options
    )
    table = query(db_path(bench_work), "SELECT * FROM table_mapper_ablation")
    table = table[table.run_id.isin({s.run_id for s in summaries})]
    assert len(table) == 2
    kinds = dict(zip(table.checkpoint, table.mapper, strict=True))  # checkpoints stored relative to the workdir
    assert kinds["runs/b/final"] == "gill_mapper" and kinds["runs/lin/final"] == "linear"
    assert table.cc3m_fid.notna().all() and table.vist_clip_sim.notna().all()
    from flows.stages.report import mapper_ablation_rows  # the figure's rows: the view with the intervals beside it

    drawn = mapper_ablation_rows(db_path(bench_work)).set_index("run_id").loc[list(table.run_id)]
    assert list(drawn.cc3m_fid) == list(table.cc3m_fid)
    assert drawn[["cc3m_fid_low", "cc3m_fid_high", "vist_clip_sim_low", "vist_clip_sim_high"]].notna().all().all()


def test_readers_order_vist_by_worker_arrangement_and_format_visdial(small_world):
    from eval.bench_data import read_visdial, read_vist

    truth = json.loads(small_world.scenes_json.read_text())["vist"]
    stories = {s.story_id: s for s in read_vist(small_world.vist_sis_json, small_world.vist_images_dir)}
    for story in truth:
        got = stories[story["story_id"]]
        assert list(got.photo_ids) == [step["photo_flickr_id"] for step in story["steps"]]
        assert all(p is not None and p.is_file() for p in got.image_paths)
    dialog = read_visdial(small_world.visdial_json, small_world.visdial_images_dir)[0]
    lines = dialog.dialog_text(2).split("\n")
    assert len(lines) == 4 and lines[0].startswith("Q: ") and lines[0].endswith("?") and lines[1].startswith("A: ")
    assert dialog.image_path.name == f"VisualDialog_val2018_{dialog.image_id:012d}.jpg"


def test_world_samples_carry_scene_columns_and_data_outside_a_world_leaves_them_null(
    bench_work, full_run, small_world, tmp_path
):
    import shutil

    from PIL import Image

    from eval.bench_data import read_cc3m_val
    from eval.scene_answers import scene_target
    from eval.scene_metric import SCENE_COLUMNS, score_image

    samples = _samples(bench_work, full_run["run_id"])
    generated = samples[(samples.status == "ok") & samples.benchmark.isin(["vist", "visdial", "cc3m-fid"])]
    assert generated.scene_score.notna().all() and generated.scene_score.between(0, 1).all()
    assert generated.prompt.notna().all()
    urls = {
        s.key: s.url for s in read_cc3m_val(split_folders("val", bench_work).images)
    }  # CC3M references are copies; the url is the key
    for benchmark in ("vist", "visdial", "cc3m-fid"):
        row = generated[(generated.benchmark == benchmark) & (generated.system == "sd")].iloc[0]
        reference = resolve_stored(row.reference_path, bench_work)
        target = scene_target(urls[row.sample_id] if benchmark == "cc3m-fid" else reference)
        with Image.open(resolve_stored(row.generated_path, bench_work)) as image:
            again = score_image(image.convert("RGB"), target.scene, target.described).columns()
        assert all(again[c] == pytest.approx(row[c]) for c in SCENE_COLUMNS), benchmark
    results = _results(bench_work, full_run["run_id"])
    scene = results[results.metric == "scene_color"]
    assert {"vist", "visdial", "cc3m-fid"} <= set(scene.benchmark)
    assert scene.metric_model.str.contains("answer key").all() and scene["mean"].between(0, 1).all()
    plain = tmp_path / "plain"  # the same stories and photos, but not inside a shapes world: real data
    shutil.copytree(small_world.vist_images_dir, plain / "images")
    shutil.copyfile(small_world.vist_sis_json, plain / "sis.json")
    options = BenchOptions(seeds=(42,), systems=("sd",), limit=2, retrieval=False, run_id="plain", **FAST)
    run_vist(bench_work, plain / "sis.json", plain / "images", settings=("1cap",), options=options)
    rows = _samples(bench_work, "plain")
    assert len(rows) == 2 and rows.scene_score.isna().all() and rows.scene_color_ok.isna().all()
    assert not _results(bench_work, "plain").metric.str.startswith("scene_").any()


def test_grids_show_context_ground_truth_sd_and_gill_for_each_setting(bench_work, full_run, tmp_path):
    from PIL import Image

    from eval.grids import TILE
    from flows.stages.report import draw_grids
    from flows.workdir import Workdir

    written = draw_grids(Workdir.at(bench_work), full_run["run_id"], tmp_path, limit=3)
    names = {p.name for p in written}
    assert {
        "grid_vist_5cap4img.png",
        "grid_vist_1cap.png",
        "grid_visdial_10rounds.png",
        "grid_cc3m-fid_val.png",
    } <= names
    with Image.open(tmp_path / "grid_vist_5cap4img.png") as grid, Image.open(tmp_path / "grid_vist_1cap.png") as one:
        assert grid.height == 40 + 3 * (TILE + 30) and grid.width > 8 * TILE  # 4 context photos + text + 4 outputs
        assert grid.width - one.width == 4 * TILE  # the same output columns; 1 caption has no context photos


def test_a_database_with_absolute_paths_of_an_older_gill_still_draws_the_same_grids(bench_work, full_run, tmp_path):
    """Older versions stored absolute paths: reading resolves relative paths only, so such a database still works."""
    import duckdb

    from flows.stages.bench_record import BenchRecorder
    from flows.stages.report import draw_grids
    from flows.workdir import Workdir

    old = tmp_path / "old"
    old.mkdir()
    shutil.copyfile(db_path(bench_work), db_path(old))

    def absolute(value):
        return value if value is None or Path(value).is_absolute() else str(bench_work / value)

    with duckdb.connect(str(db_path(old))) as con:
        keys = "run_id, benchmark, setting, system, seed, sample_id"
        rows = con.execute(f"SELECT {keys}, generated_path, reference_path, context_paths FROM samples").fetchall()
        con.executemany(
            "UPDATE samples SET generated_path = ?, reference_path = ?, context_paths = ? WHERE run_id = ? AND "
            "benchmark = ? AND setting = ? AND system = ? AND seed = ? AND sample_id = ?",
            [
                [absolute(g), absolute(r), json.dumps([absolute(p) for p in json.loads(c or "[]")]), *key]
                for *key, g, r, c in rows
            ],
        )
        assert con.execute("SELECT count(*) FROM samples WHERE generated_path LIKE 'bench/%'").fetchone() == (0,)
    new_grids = draw_grids(Workdir.at(bench_work), full_run["run_id"], tmp_path / "new-grids", limit=2)
    old_grids = draw_grids(Workdir.at(old), full_run["run_id"], tmp_path / "old-grids", limit=2)
    assert [p.name for p in old_grids] == [p.name for p in new_grids]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(old_grids, new_grids, strict=True))
    scored = BenchRecorder(bench_work, full_run["run_id"]).scored_images("cc3m-fid", "val")
    assert scored.equals(BenchRecorder(old, full_run["run_id"]).scored_images("cc3m-fid", "val"))
    assert all(p.is_file() for p in scored.generated_path)


# -- batched generation ----------------------------------------------------------------------------------------------

PIXEL_TOLERANCE = 2
"""Most an 8-bit value of a saved PNG may differ (of 255) between generation at batch 1 and batch 8: batched CPU
kernels round differently in the last float bits, and PNG quantisation can turn that into 1/255. Measured on the tiny
preset: at most 1, on at most 3 of an image's 64x64x3 values."""
SCORE_TOLERANCE = 1e-3
"""Most CLIP similarity, LPIPS or the scene score of a sample may differ between batch 1 and batch 8. Measured on the
tiny preset: CLIP similarity 3.5e-5, LPIPS 8e-7, scene score 0."""
GENERATING = ("gill", "gill-gen", "gill-ret", "gill-oracle", "sd")


def _main_checkpoint(work: Path) -> Path:
    """The module's checkpoint (the ablation test trains a newer one, which would become the default)."""
    return work / "runs" / "b" / "final"


def _vist_args(work: Path, world) -> tuple:
    return work, world.vist_sis_json, world.vist_images_dir


def _pixels(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _assert_same_rows(work: Path, first, second) -> None:
    """Two runs' sample rows: same keys, statuses, decisions and seeds; images and scores within tolerance."""
    key = ["benchmark", "setting", "system", "seed", "sample_id"]
    a, b = first.set_index(key).sort_index(), second.set_index(key).sort_index()
    assert list(a.index) == list(b.index) and list(a.status) == list(b.status)
    for column in ("decision", "ret_key", "sd_seed"):
        assert [str(v) for v in a[column]] == [str(v) for v in b[column]], column
    ok = a.status == "ok"
    for column in ("clip_sim", "lpips", "scene_score"):
        assert np.allclose(a[ok][column], b[ok][column], atol=SCORE_TOLERANCE, equal_nan=True), column
    for p, q in zip(a[ok].generated_path, b[ok].generated_path, strict=True):
        assert p != q and np.abs(_pixels(resolve_stored(p, work)) - _pixels(resolve_stored(q, work))).max() <= (
            PIXEL_TOLERANCE
        )


def test_batched_generation_gives_the_images_and_scores_of_one_sample_at_a_time(bench_work, small_world):
    """run_generation at gen_batch_size 1 and 8 (VIST 5 captions + 4 images, every generating system; CC3M FID's 8
    samples, one full batch): the same rows, images within PIXEL_TOLERANCE and scores within SCORE_TOLERANCE."""
    base = BenchOptions(seeds=(42,), systems=GENERATING, retrieval=False, **FAST)
    ckpt = _main_checkpoint(bench_work)
    for size in (1, 8):
        options = dataclasses.replace(base, gen_batch_size=size, run_id=f"batch{size}")
        run_vist(*_vist_args(bench_work, small_world), settings=("5cap4img",), checkpoint=ckpt, options=options)
        run_cc3m_fid(bench_work, checkpoint=ckpt, options=dataclasses.replace(options, systems=("gill-gen", "sd")))
    one, eight = _samples(bench_work, "batch1"), _samples(bench_work, "batch8")
    assert len(one) == 4 * 5 + 8 * 2 and (one.status == "ok").all()
    _assert_same_rows(bench_work, one, eight)
    # the batch size is not part of the run's identity: without a run id, both batch sizes name the same run
    ids = {
        BenchSession.open(bench_work, checkpoint=ckpt, options=dataclasses.replace(base, gen_batch_size=n)).run_id
        for n in (1, 8)
    }
    assert len(ids) == 1


def test_a_batch_generates_only_what_each_sample_needs_and_each_as_if_alone(bench_work, small_world, monkeypatch):
    """SystemRunner.produce_batch with mixed needs and decisions (the classifier patched to pick generation for one
    ``gill`` sample and retrieval for the other): one GILL SD call holding exactly the samples that generate, one SD
    call for the ``sd`` texts, and each sample's outputs those of produce() alone (within PIXEL_TOLERANCE)."""
    from eval.bench import SampleRequest, vist_items
    from eval.bench_data import read_vist
    from eval.bench_systems import derive_seed

    options = BenchOptions(seeds=(42,), systems=ALL, run_id="mixed", retrieval=False, **FAST)
    session = BenchSession.open(bench_work, checkpoint=_main_checkpoint(bench_work), options=options)
    session.runner.clip_bank = session.clip_bank
    items = vist_items(read_vist(small_world.vist_sis_json, small_world.vist_images_dir), "5cap4img")
    needs = [("gill",), ("gill", "sd"), ("gill-ret", "clip-retrieval", "fromage-retrieval"), ("gill-oracle", "sd")]
    requests = [SampleRequest(item=item, systems=need) for item, need in zip(items, needs, strict=True)]

    generating_seed = derive_seed(42, items[0].sample_id)  # only sample 0's classifier says "generate"
    decide = session.pipe.decide
    monkeypatch.setattr(
        session.pipe,
        "decide",
        lambda h, settings, best: dataclasses.replace(
            decide(h, settings, best), label="gen" if settings.seed == generating_seed else "ret"
        ),
    )
    calls: list[tuple[str, int]] = []  # every Stable Diffusion call: GILL's (prompt embeddings) or sd's (text), size
    sd_call = type(session.pipe.sd).__call__

    def spy(self, *args, **kwargs):
        calls.append(("gill" if kwargs.get("prompt_embeds") is not None else "sd", len(kwargs["generator"])))
        return sd_call(self, *args, **kwargs)

    monkeypatch.setattr(type(session.pipe.sd), "__call__", spy)
    together = session.producer.produce_batch(requests, 42)
    assert calls == [("gill", 2), ("sd", 2)]  # sample 0 (gill -> gen) and sample 3 (oracle); the two sd texts
    calls.clear()
    alone = [session.producer.produce(item, 42, need) for item, need in zip(items, needs, strict=True)]
    assert calls == [("gill", 1), ("sd", 1), ("gill", 1), ("sd", 1)]
    assert [set(t.produced) for t in together] == [
        {"gill", "gill-gen"},
        {"gill", "gill-ret", "sd"},
        {"gill-ret", "clip-retrieval", "fromage-retrieval"},
        {"gill-gen", "gill-ret", "sd"},
    ]
    assert together[0].produced["gill"].decision == "gen" and together[1].produced["gill"].decision == "ret"
    for t, a in zip(together, alone, strict=True):
        assert set(t.produced) == set(a.produced) and t.sd_seed == a.sd_seed
        for system, out in t.produced.items():
            other = a.produced[system]
            assert (out.decision, out.ret_key, out.skip_reason) == (other.decision, other.ret_key, other.skip_reason)
            diff = np.abs(np.asarray(out.image, np.int16) - np.asarray(other.image, np.int16))
            assert diff.max() <= PIXEL_TOLERANCE, system


def test_a_crash_mid_batch_loses_only_that_batch_and_a_rerun_completes_it(bench_work, small_world, monkeypatch):
    """Batches of 2 stories, rows written after every sample: an SD failure in the second batch keeps the first
    batch's rows; the re-run resumes them and produces the rest. Then two samples of one batch with different
    missing systems are regenerated together in one batch, each getting the image it had."""
    from eval.bench_systems import SystemRunner

    options = BenchOptions(
        seeds=(42,), systems=("gill-gen", "sd"), run_id="crash", retrieval=False, **{**FAST, "write_every": 1}
    )
    options = dataclasses.replace(options, gen_batch_size=2)
    calls = {"n": 0}
    generate_sd = SystemRunner.generate_sd

    def failing(self, texts, seeds):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in the second batch")
        return generate_sd(self, texts, seeds)

    args = _vist_args(bench_work, small_world)
    with monkeypatch.context() as patch:
        patch.setattr(SystemRunner, "generate_sd", failing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_vist(*args, settings=("1cap",), checkpoint=_main_checkpoint(bench_work), options=options)
    rows = _samples(bench_work, "crash")
    assert len(rows) == 2 * 2 and (rows.status == "ok").all()  # the first batch: 2 stories x 2 systems
    first = sorted(set(rows.sample_id))
    again = run_vist(*args, settings=("1cap",), checkpoint=_main_checkpoint(bench_work), options=options)[0]
    assert again.resumed == 4 and again.scored == 4
    rows = _samples(bench_work, "crash")
    assert len(rows) == 4 * 2 and (rows.status == "ok").all()
    import duckdb

    # sample A misses its sd row, sample B its gill-gen row: one batch with two different need lists
    lost = {(first[0], "sd"), (first[1], "gill-gen")}
    before = {
        key: (_pixels(resolve_stored(r.generated_path, bench_work)), r.clip_sim)
        for r in rows.itertuples()
        if (key := (r.sample_id, r.system)) in lost
    }
    with duckdb.connect(str(db_path(bench_work))) as con:
        for sample_id, system in lost:
            con.execute(
                "DELETE FROM samples WHERE run_id = 'crash' AND sample_id = ? AND system = ?", [sample_id, system]
            )
    redone = run_vist(
        *args,
        settings=("1cap",),
        checkpoint=_main_checkpoint(bench_work),
        options=dataclasses.replace(options, gen_batch_size=8),
    )[0]
    assert redone.scored == 2 and redone.resumed == 6
    rows = _samples(bench_work, "crash")
    for r in rows.itertuples():
        if (key := (r.sample_id, r.system)) in lost:
            pixels, clip_sim = before[key]
            assert np.abs(_pixels(resolve_stored(r.generated_path, bench_work)) - pixels).max() <= PIXEL_TOLERANCE
            assert abs(r.clip_sim - clip_sim) <= SCORE_TOLERANCE
