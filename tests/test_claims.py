"""The claims view: verdicts from intervals and from paired differences, ablation arms, the decision claim;
the answer key of a synthetic world; an older database gaining the new columns."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from eval.claims import CHANCE_MACRO_F1, CLAIMS
from eval.scene_answers import scene_target
from flows.store import db_path, ensure_database, query, replace_rows

T0 = dt.datetime(2026, 1, 1)


def _run(run_id: str, mapper: str = "gill_mapper", minutes: int = 0) -> dict:
    config = {"model": {"adapters": {"mapper": {"kind": mapper}}}}
    return {
        "run_id": run_id,
        "started_at": T0 + dt.timedelta(minutes=minutes),
        "preset": "tiny",
        "checkpoint": f"/ckpt/{run_id}",
        "config": json.dumps(config),
    }


def _result(run_id: str, benchmark: str, setting: str, system: str, metric: str, mean: float, half: float) -> dict:
    return {
        "run_id": run_id,
        "benchmark": benchmark,
        "setting": setting,
        "system": system,
        "metric": metric,
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n": 10,
        "n_seeds": 1,
    }


def _samples(run_id: str, setting: str, system: str, values: list[float], column: str = "clip_sim") -> list[dict]:
    return [
        {
            "run_id": run_id,
            "benchmark": "vist",
            "setting": setting,
            "system": system,
            "seed": 42,
            "sample_id": f"s{i}",
            "status": "ok",
            column: v,
        }
        for i, v in enumerate(values)
    ]


def _claims(path, run_id: str = "main") -> dict:
    frame = query(path, "SELECT * FROM claims WHERE run_id = ?", [run_id])
    return {r.claim_id: r for r in frame.itertuples()}


@pytest.fixture
def database(tmp_path):
    path = db_path(tmp_path)
    ensure_database(path)
    replace_rows(path, "runs", [_run("main", minutes=10), _run("lin", "linear", 5), _run("old-lin", "linear", 1)])
    return path


def test_separated_intervals_hold_overlapping_ones_are_inconclusive_and_reversed_ones_fail(database):
    replace_rows(
        database,
        "results",
        [
            _result("main", "vist", "5cap", "gill-gen", "clip_sim", 0.60, 0.01),
            _result("main", "vist", "5cap", "sd", "clip_sim", 0.50, 0.01),  # a1: A clearly above B -> true
            _result("main", "vist", "1cap", "gill-gen", "clip_sim", 0.59, 0.05),  # b1: overlapping -> inconclusive
            _result("main", "vist", "5cap4img", "gill-gen", "clip_sim", 0.40, 0.01),  # b2: A below B -> false
        ],
    )
    claims = _claims(database)
    assert claims["a1"].holds == "true"
    assert claims["b1"].holds == "inconclusive"
    assert claims["b2"].holds == "false"
    assert claims["a1"].paper_a == pytest.approx(0.612) and claims["a1"].paper_b == pytest.approx(0.598)
    assert claims["b5"].holds == "not run"  # no VisDial results at all


def test_paired_differences_decide_what_overlapping_intervals_cannot(database):
    base = [0.2, 0.5, 0.8, 0.3, 0.6, 0.9, 0.4, 0.7]
    replace_rows(
        database,
        "results",
        [
            _result("main", "vist", "5cap4img", "gill-oracle", "clip_sim", 0.57, 0.2),
            _result("main", "vist", "5cap4img", "gill-gen", "clip_sim", 0.55, 0.2),
        ],
    )
    replace_rows(
        database,
        "samples",
        _samples("main", "5cap4img", "gill-oracle", [v + 0.02 for v in base])
        + _samples("main", "5cap4img", "gill-gen", base),
    )
    e2 = _claims(database)["e2"]
    assert e2.holds == "inconclusive"  # the two wide intervals overlap
    assert e2.n_pairs == len(base)
    assert e2.diff == pytest.approx(0.02)
    assert e2.holds_paired == "true"  # every pair differs by +0.02


def test_ablation_claims_compare_with_the_latest_run_of_the_other_mapper(database):
    replace_rows(
        database,
        "results",
        [
            _result("main", "vist", "5cap4img", "gill-gen", "clip_sim", 0.60, 0.01),
            _result("lin", "vist", "5cap4img", "gill-gen", "clip_sim", 0.70, 0.01),
            _result("old-lin", "vist", "5cap4img", "gill-gen", "clip_sim", 0.10, 0.01),
        ],
    )
    c1 = _claims(database)["c1"]
    assert c1.ours_b == pytest.approx(0.70)  # the newer linear run, not the older one
    assert c1.holds == "false"
    assert _claims(database)["c2"].holds == "not run"  # no MLP run


def test_decision_claim_uses_the_latest_cross_validation_folds_against_chance(database):
    replace_rows(database, "results", [_result("main", "vist", "5cap", "sd", "clip_sim", 0.5, 0.01)])
    rows = [
        {
            "run_id": run,
            "created": T0 + dt.timedelta(minutes=m),
            "protocol": "cv5",
            "metric": f"macro_f1_fold{k}",
            "value": v + 0.01 * k,
            "n": 900,
        }
        for run, m, v in (("d-old", 0, 0.40), ("d-new", 5, 0.70))
        for k in range(5)
    ]
    replace_rows(database, "decision_eval", rows)
    e1 = _claims(database)["e1"]
    assert e1.ours_a == pytest.approx(0.72)
    assert e1.ours_b == pytest.approx(CHANCE_MACRO_F1)
    assert e1.a_low < e1.ours_a < e1.a_high and e1.holds == "true"
    assert "e4" not in _claims(database)  # no bank-aware fit: no row


def test_the_official_and_the_bank_aware_decision_claims_read_their_own_fits(database):
    replace_rows(database, "results", [_result("main", "vist", "5cap", "sd", "clip_sim", 0.5, 0.01)])
    fits = (("official", False, 0, 0.45, "d-off"), ("balanced", True, 5, 0.62, "d-aware"))
    rows = [
        {
            "run_id": run,
            "created": T0 + dt.timedelta(minutes=m),
            "protocol": "cv5",
            "metric": f"macro_f1_fold{k}",
            "value": v + 0.01 * k,
            "n": 300,
            "recipe": recipe,
            "with_retrieval_score": score,
        }
        for recipe, score, m, v, run in fits
        for k in range(5)
    ]
    rows.append(
        {
            "run_id": "d-aware",
            "created": T0 + dt.timedelta(minutes=5),
            "protocol": "simulated-panel",
            "metric": "macro_f1_official",
            "value": 0.95,
            "n": 300,
        }
    )
    replace_rows(database, "decision_eval", rows)
    claims = _claims(database)
    assert claims["e1"].ours_a == pytest.approx(0.47) and claims["e1"].holds == "false"  # the newer fit is not e1's
    assert claims["e1"].arm_a == "decision classifier (official recipe, h[IMG0]; latest fit)"
    assert claims["e4"].ours_a == pytest.approx(0.64) and claims["e4"].holds == "true"
    assert "SIMULATED" in claims["e4"].arm_a and "retrieval score" in claims["e4"].arm_a


def test_every_claim_names_its_source_and_the_report_prints_the_table(database, tmp_path, capsys):
    from flows.command.parser import main

    assert {c.claim_id[0] for c in CLAIMS} == set("abcde") and all(c.source for c in CLAIMS)
    replace_rows(
        database,
        "results",
        [
            _result("main", "vist", "5cap", "gill-gen", "clip_sim", 0.6, 0.01),
            _result("main", "vist", "5cap", "sd", "clip_sim", 0.5, 0.01),
        ],
    )
    assert main(["report", "--workdir", str(tmp_path), "--claims"]) == 0
    out = capsys.readouterr().out
    assert "GILL beats SD at 5 captions (VIST)" in out and "Table 1" in out and "true" in out


def test_an_older_database_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    path = db_path(tmp_path)
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE samples (run_id VARCHAR NOT NULL, benchmark VARCHAR NOT NULL, setting VARCHAR NOT NULL, "
        "system VARCHAR NOT NULL, seed INTEGER NOT NULL, sample_id VARCHAR NOT NULL, clip_sim DOUBLE, "
        "PRIMARY KEY (run_id, benchmark, setting, system, seed, sample_id))"
    )
    con.execute("INSERT INTO samples VALUES ('r', 'vist', '5cap', 'sd', 42, 's0', 0.5)")
    con.close()
    ensure_database(path)
    frame = query(path, "SELECT clip_sim, scene_score, scene_color_ok, prompt FROM samples")
    assert frame.clip_sim.tolist() == [0.5] and frame.scene_score.isna().all() and frame.prompt.isna().all()


def test_the_answer_key_finds_the_scene_of_every_world_image_and_nothing_else(small_world, tmp_path):
    scenes = json.loads(small_world.scenes_json.read_text())
    story = scenes["vist"][0]["steps"][-1]
    vist = scene_target(small_world.vist_images_dir / f"{story['photo_flickr_id']}.jpg")
    assert vist is not None and vist.described == (0,) and vist.scene.to_dict() == story["scene"]
    dialog = scenes["visdial"][1]
    visdial = scene_target(small_world.visdial_images_dir / f"VisualDialog_val2018_{dialog['image_id']:012d}.jpg")
    assert visdial is not None and visdial.described is None and visdial.scene.to_dict() == dialog["scene"]
    url = (small_world.cc3m_images_dir / "val" / "0000003.jpg").as_uri()
    cc3m = scene_target(url)
    assert cc3m is not None and cc3m.scene.to_dict() == scenes["cc3m"]["val"][3]["scene"]
    outside = tmp_path / "photo.jpg"
    outside.write_bytes(b"")
    assert scene_target(outside) is None and scene_target("https://example.com/a.jpg") is None
    assert scene_target(small_world.root / "vist" / "images" / "no-such-photo.jpg") is None
