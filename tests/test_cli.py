"""The ``gill`` command: help, config display, synthetic data and the demo, called as users call them."""

from __future__ import annotations

import json
import subprocess
import sys

from flows.command.parser import main
from flows.store import query


def test_gill_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "flows.command", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("models", "config", "data", "demo"):
        assert command in proc.stdout


def test_config_show_prints_paper_dims_from_shipped_configs(capsys, tmp_path):
    assert main(["config", "show", "--preset", "paper", "--out", str(tmp_path / "paper.json")]) == 0
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{") :])
    assert payload["derived_dims"]["lm_hidden"] == 4096
    assert payload["config"]["backbones"]["lm"]["id"] == "facebook/opt-6.7b"
    assert json.loads((tmp_path / "paper.json").read_text()) == payload["config"]


def test_config_file_with_errors_is_rejected_with_field_names(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"backbones": {"lm": {"id": "x"}}, "max_len": "long"}))
    assert main(["config", "show", "--config", str(bad), "--no-dims"]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "backbones.vision: required field is missing" in err and "max_len: expected int" in err


def test_data_synth_writes_the_world(tmp_path, capsys):
    out = tmp_path / "world"
    argv = [
        "data",
        "synth",
        "--out",
        str(out),
        "--n-train",
        "4",
        "--n-val",
        "2",
        "--n-stories",
        "1",
        "--n-dialogs",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_train"] == 4
    assert len((out / "cc3m" / "cc3m_train.tsv").read_text().splitlines()) == 4


def test_demo_runs_every_stage_and_writes_a_report(tiny_zoo, tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    report = json.loads((workdir / "demo_report.json").read_text())
    names = [s["name"] for s in report["stages"]]
    assert names == [
        "tiny model zoo",
        "backbones available",
        "synthetic shapes world",
        "derived dims",
        "download cc3m train",
        "download cc3m val",
        "precompute targets train",
        "precompute targets val",
        "train adapters",
        "retrieval bank",
        "inference",
    ]
    training = report["stages"][-3]["outputs"]
    assert (workdir / "runs" / "demo-seed0" / "loss_curve.png").is_file() and "val t2i/i2t R@1" in training
    database = workdir / "gill.duckdb"
    sql = "SELECT split, sum(count) n, sum(successes) ok FROM download_shards GROUP BY split ORDER BY split"
    assert query(database, sql).to_dict("records") == [
        {"split": "train", "n": 256, "ok": 256},
        {"split": "val", "n": 64, "ok": 64},
    ]
    assert int(query(database, "SELECT sum(count) n FROM precompute_shards")["n"][0]) == 320
    assert report["stages"][-2]["outputs"]["images"] == 256  # every downloaded training image is in the bank
    inference = report["stages"][-1]["outputs"]
    for name in ("gen-00-gen", "ret-00-ret"):
        assert (workdir / "samples" / f"{name}.png").stat().st_size > 100
        assert json.loads((workdir / "samples" / f"{name}.json").read_text())["kind"] == name[-3:]
    assert "CLIP similarity to ground truth" in inference["generated"] and "key " in inference["retrieved"]
    assert "inference" in out and str(workdir) in out


def test_db_query_prints_results_and_names_a_missing_database(tmp_path, capsys):
    from flows.store import db_path, record_precompute

    row = {"split": "val", "shard": "00000", "count": 7, "fingerprint": "f", "duration_s": 1.0, "samples_per_s": 7.0}
    record_precompute(db_path(tmp_path), [row])
    assert main(["db", "query", "--workdir", str(tmp_path), "--csv", "SELECT split, count FROM precompute_shards"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == ["split,count", "val,7"]
    assert main(["db", "query", "--workdir", str(tmp_path / "nowhere"), "SELECT 1"]) == 2
    assert "no database at" in capsys.readouterr().err


def test_user_sql_cannot_touch_files_extensions_or_the_network(tmp_path, capsys):
    from flows.store import db_path, ensure_database

    ensure_database(db_path(tmp_path))
    secret = tmp_path / "secret.csv"
    secret.write_text("a\nsecret-value\n")
    attempts = [
        f"COPY (SELECT 1) TO '{tmp_path / 'written.csv'}'",
        f"SELECT * FROM read_csv('{secret}')",
        "INSTALL httpfs",
        "LOAD httpfs",
        f"ATTACH '{tmp_path / 'other.duckdb'}'",
        "SET enable_external_access = true",
    ]
    for sql in attempts:
        assert main(["db", "query", "--workdir", str(tmp_path), sql]) == 2, sql
        err = capsys.readouterr().err
        assert "the SQL query failed" in err and "secret-value" not in err and "Traceback" not in err, sql
    assert not (tmp_path / "written.csv").exists() and not (tmp_path / "other.duckdb").exists()
    assert main(["db", "query", "--workdir", str(tmp_path), "  "]) == 2
    assert "the SQL text is empty" in capsys.readouterr().err
    assert main(["db", "query", "--workdir", str(tmp_path), "--max-rows", "-1", "SELECT 1"]) == 2
    assert "max_rows" in capsys.readouterr().err


def test_a_bad_or_missing_device_and_an_odd_batch_are_plain_errors(tmp_path, capsys, monkeypatch):
    import torch

    for argv in (
        ["generate", "--workdir", str(tmp_path), "--device", "banana", "a red star"],
        ["train", "--workdir", str(tmp_path), "--device", "banana"],
    ):
        assert main(argv) == 2
        assert "'banana' is not a torch device" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", "--workdir", str(tmp_path), "--device", "cuda", "a red star"]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err
    assert main(["train", "--workdir", str(tmp_path), "--batch-size", "3", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "must be even" in err and "Traceback" not in err


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, capsys, monkeypatch):
    """`gill annotate status | head -1`: writing after the reader left raises BrokenPipeError; the command ends
    quietly (exit 141, as a shell reports a SIGPIPE) instead of printing a traceback."""
    import sys

    from flows.store import db_path, ensure_database

    ensure_database(db_path(tmp_path))
    sink = (tmp_path / "devnull").open("w")

    class LeftReader:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return sink.fileno()

    monkeypatch.setattr(sys, "stdout", LeftReader())
    assert main(["db", "query", "--workdir", str(tmp_path), "SELECT 1 AS n"]) == 141
    assert capsys.readouterr().err == ""
    sink.close()
