"""gill.duckdb is documented (every column has a comment) and readable by DuckDB 1.x, although gill writes it with
DuckDB 2.

The 1.x reader is a REAL DuckDB 1.1.3 in its own cached virtualenv (``make duckdb-1x``, which ``make test`` runs
first; ``GILL_DUCKDB1_PYTHON`` names another interpreter with DuckDB 1.x). Under ``make test`` or in CI a missing
reader FAILS the test; a bare ``pytest`` on a developer machine without it skips with the command to run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flows import store as db

ROOT = Path(__file__).resolve().parents[1]
ENV_SCRIPT = ROOT / "scripts" / "duckdb1_env.sh"

READER = r"""
import json, sys
import duckdb

con = duckdb.connect(sys.argv[1], read_only=True)
out = {"version": duckdb.__version__}
out["tables"] = {
    name: con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    for (name,) in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
}
out["views"] = {
    name: con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()
}
out["comments"] = con.execute(
    "SELECT table_name, column_name, comment FROM duckdb_columns() "
    "WHERE table_name IN (SELECT table_name FROM duckdb_tables()) ORDER BY ALL"
).fetchall()
out["table1_vist"] = con.execute("SELECT system, clip_5cap FROM table1_vist ORDER BY system").fetchall()
out["claim_a1"] = con.execute("SELECT holds FROM claims WHERE claim_id = 'a1'").fetchall()
out["mapper"] = con.execute("SELECT mapper FROM table_mapper_ablation").fetchall()
out["samples"] = con.execute("SELECT count(*), sum(clip_sim), sum(sd_seed) FROM samples").fetchone()
print(json.dumps(out))
"""


def _original_environ() -> dict[str, str]:
    """The environment this process started with: conftest points XDG_CACHE_HOME at a temporary folder, but the
    DuckDB 1.x virtualenv is where ``make duckdb-1x`` put it with the caller's own environment."""
    try:
        raw = Path("/proc/self/environ").read_bytes().decode("utf-8", "replace")
    except OSError:
        return dict(os.environ)
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)


def _duckdb1_python() -> Path:
    """The DuckDB 1.x interpreter (``scripts/duckdb1_env.sh --python``); fails or skips when it is missing."""
    env = _original_environ()
    if os.environ.get("GILL_DUCKDB1_PYTHON"):
        env["GILL_DUCKDB1_PYTHON"] = os.environ["GILL_DUCKDB1_PYTHON"]
    python = Path(
        subprocess.run(
            ["bash", str(ENV_SCRIPT), "--python"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    if not python.is_file():
        message = (
            f"no DuckDB 1.x client at {python}: run `make duckdb-1x` (`make test` runs it first; "
            "GILL_DUCKDB1_PYTHON names another interpreter with DuckDB 1.x)"
        )
        if os.environ.get("GILL_DUCKDB1_REQUIRED") or os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return python


def _write_store(workdir: Path) -> Path:
    """A gill.duckdb with rows in every table, written through gill's own writers."""
    from flows.stages.decision import record_decision

    path = db.db_path(workdir)
    shard = dict(split="train", shard="00000")
    db.record_download(
        path,
        "train",
        [dict(shard, count=10, successes=8, failed_to_download=1, failed_to_resize=1, duration_s=1.5)],
        [
            dict(
                shard,
                url="http://example.invalid/a.jpg",
                caption="a cat",
                status="failed_to_download",
                error_message="404",
            )
        ],
    )
    db.record_precompute(path, [dict(shard, count=8, fingerprint="f" * 64, duration_s=2.0, samples_per_s=4.0)])
    db.record_metrics(path, "run-1", 10, {"loss": 1.25, "val_acc1": 0.5})
    config = {"model": {"adapters": {"mapper": {"kind": "gill"}}}}
    db.replace_rows(
        path,
        "runs",
        [
            dict(
                run_id="b1",
                started_at=dt.datetime(2024, 1, 1),
                preset="tiny",
                checkpoint="runs/run-1/best",
                config=json.dumps(config),
            )
        ],
    )
    samples = [
        dict(
            run_id="b1",
            benchmark="vist",
            setting="5cap",
            system=system,
            seed=seed,
            sample_id=f"story-{i}",
            status="ok",
            clip_sim=0.5 + 0.1 * (system == "gill-gen") + 0.01 * i,
            sd_seed=2**40 + i,
            generated_path=f"bench/b1/vist/{system}/{i}.png",
            context_paths=json.dumps([f"bench/ctx/{i}.png", None]),
        )
        for system in ("gill-gen", "sd")
        for seed in (0, 1)
        for i in range(50)
    ]
    db.replace_rows(path, "samples", samples)
    db.replace_rows(path, "samples", samples[:10])  # replaced by key, not duplicated
    results = [
        dict(
            run_id="b1",
            benchmark="vist",
            setting="5cap",
            system=system,
            metric="clip_sim",
            mean=mean,
            ci_low=mean - 0.01,
            ci_high=mean + 0.01,
            n=50,
            n_seeds=2,
        )
        for system, mean in (("gill-gen", 0.62), ("sd", 0.52))
    ]
    results.append(dict(run_id="b1", benchmark="cc3m-fid", setting="val", system="gill-gen", metric="fid", mean=30.0))
    db.replace_rows(path, "results", results, scope={"run_id": "b1", "benchmark": "vist"})
    db.replace_rows(path, "unsupported_systems", [dict(run_id="b1", benchmark="vist", system="glide", reason="none")])
    db.replace_rows(
        path, "decision_candidates", [dict(prompt_id=0, prompt="a cat", gen_image="a/0-gen.png", sd_seed=1)]
    )
    record_decision(
        workdir,
        [
            dict(
                run_id="d1",
                created=dt.datetime(2024, 1, 1),
                protocol="cv5",
                metric="macro_f1",
                value=0.7,
                n=10,
                with_retrieval_score=False,
                recipe="official",
            )
        ],
    )
    return path


def test_every_column_of_the_schema_has_a_comment(tmp_path):
    for table in db.TABLES.values():
        assert table.comment.strip() and "\n" not in table.comment, table.name
        for column in table.columns:
            assert column.comment.strip() and "\n" not in column.comment, (table.name, column.name)
    path = db.ensure_database(db.db_path(tmp_path))
    with duckdb.connect(str(path), read_only=True) as con:
        columns = con.execute(
            "SELECT table_name, column_name, comment FROM duckdb_columns() WHERE NOT internal"
        ).fetchall()
        tables = dict(con.execute("SELECT table_name, comment FROM duckdb_tables()").fetchall())
    stored = {(t, c): comment for t, c, comment in columns if t in db.TABLES}
    declared = {(t.name, c.name): c.comment for t in db.TABLES.values() for c in t.columns}
    assert stored == declared
    assert tables == {name: t.comment for name, t in db.TABLES.items()}


def test_comments_follow_the_declaration_and_columns_of_a_newer_gill_are_added(tmp_path):
    path = db.db_path(tmp_path)
    with duckdb.connect(str(path), config={"storage_compatibility_version": db.STORAGE_VERSION}) as con:
        con.execute(
            "CREATE TABLE train_metrics (run_id VARCHAR, step INTEGER, name VARCHAR, PRIMARY KEY (run_id, step, name))"
        )
        con.execute("COMMENT ON COLUMN train_metrics.step IS 'an outdated description'")
        con.execute("INSERT INTO train_metrics VALUES ('r', 1, 'loss')")
    db.ensure_database(path)
    with duckdb.connect(str(path), read_only=True) as con:
        got = dict(
            con.execute(
                "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = 'train_metrics'"
            ).fetchall()
        )
        assert con.execute("SELECT * FROM train_metrics").fetchall() == [("r", 1, "loss", None)]
    assert got == {c.name: c.comment for c in db.TABLES["train_metrics"].columns}


def test_a_new_file_has_the_header_of_the_pinned_storage_version(tmp_path):
    path = db.ensure_database(db.db_path(tmp_path))
    assert db.storage_version_number(path) == db.STORAGE_VERSION_NUMBER == 64
    assert path.read_bytes()[8:12] == b"DUCK"
    db.record_metrics(path, "r", 1, {"loss": 1.0})  # reopening and writing keeps the format
    assert db.storage_version_number(path) == db.STORAGE_VERSION_NUMBER
    with duckdb.connect(str(path), read_only=True) as con:
        (tags,) = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    assert tags["storage_version"] == "v1.0.0+"  # how DuckDB 2 names header version 64 (1.0 and 1.1 files)
    assert db.storage_version_number(tmp_path / "missing.duckdb") is None
    (tmp_path / "other.txt").write_text("not a database at all")
    assert db.storage_version_number(tmp_path / "other.txt") is None


def test_a_file_in_duckdb_2_format_is_converted_on_write_without_losing_anything(tmp_path, caplog):
    path = db.db_path(tmp_path)
    with duckdb.connect(str(path)) as con:  # what gill wrote before it pinned the format: DuckDB 2's default
        con.execute(f"CREATE TABLE train_metrics ({db.TABLES['train_metrics'].definition()})")
        con.execute("INSERT INTO train_metrics SELECT 'r', range, 'loss', range / 10 FROM range(1000)")
        con.execute("CREATE TABLE my_notes (note VARCHAR)")  # a user's own table and view come along
        con.execute("INSERT INTO my_notes VALUES ('keep me')")
        con.execute("CREATE VIEW my_view AS SELECT count(*) AS n FROM train_metrics")
        con.execute("COMMENT ON TABLE my_notes IS 'mine'")
    assert db.storage_version_number(path) > db.STORAGE_VERSION_NUMBER
    with caplog.at_level(logging.WARNING, logger="flows.store"):
        db.record_metrics(path, "r", 1000, {"loss": 5.0})
    assert "which DuckDB 1.x cannot read: converting it to v1.1.0" in caplog.text
    assert db.storage_version_number(path) == db.STORAGE_VERSION_NUMBER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gill.duckdb"]  # no temporary file or WAL left
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*), sum(step) FROM train_metrics").fetchone() == (1001, 999 * 1000 // 2 + 1000)
        assert con.execute("SELECT * FROM my_notes").fetchall() == [("keep me",)]
        assert con.execute("SELECT n FROM my_view").fetchone() == (1001,)
        assert con.execute("SELECT comment FROM duckdb_tables() WHERE table_name = 'my_notes'").fetchone() == ("mine",)
        keys = con.execute(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE table_name = 'train_metrics' AND constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    assert keys == [(["run_id", "step", "name"],)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flows.store"):
        db.record_metrics(path, "r", 1001, {"loss": 5.0})
    assert not caplog.text  # converted once
    assert db.convert_storage(path) is False


def test_a_read_only_open_leaves_a_duckdb_2_file_as_it_is(tmp_path):
    path = db.db_path(tmp_path)
    duckdb.connect(str(path)).close()
    before = db.storage_version_number(path)
    with db.connect(path, read_only=True) as con:
        assert con.execute("SELECT 1").fetchone() == (1,)
    assert db.storage_version_number(path) == before > db.STORAGE_VERSION_NUMBER


def test_a_failed_conversion_leaves_the_original_untouched(tmp_path, monkeypatch):
    path = db.db_path(tmp_path)
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t AS SELECT range AS x FROM range(10)")
    original = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(db.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        db.convert_storage(path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gill.duckdb"]


def test_duckdb_1x_reads_the_tables_and_views_gill_wrote(tmp_path):
    python = _duckdb1_python()
    path = _write_store(tmp_path)
    proc = subprocess.run(
        [str(python), "-c", READER, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
    )
    assert proc.returncode == 0, f"DuckDB 1.x ({python}) could not read {path}:\n{proc.stderr[-3000:]}"
    got = json.loads(proc.stdout)
    assert got["version"].startswith("1."), got["version"]
    assert got["tables"] == {
        "decision_candidates": 1,
        "decision_eval": 1,
        "download_failures": 1,
        "download_shards": 1,
        "precompute_shards": 1,
        "results": 3,
        "runs": 1,
        "samples": 200,
        "train_metrics": 2,
        "unsupported_systems": 1,
    }
    from flows.store_views import VIEWS

    assert set(got["views"]) == set(VIEWS)
    assert got["table1_vist"] == [["gill-gen", 0.62], ["sd", 0.52]]
    assert got["claim_a1"] == [["true"]]
    assert got["mapper"] == [["gill"]]
    clip = sum(0.5 + 0.1 * (s == "gill-gen") + 0.01 * i for s in ("gill-gen", "sd") for _ in (0, 1) for i in range(50))
    count, clip_sum, seed_sum = got["samples"]
    assert (count, seed_sum) == (200, 4 * sum(2**40 + i for i in range(50)))
    assert clip_sum == pytest.approx(clip)
    declared = sorted([t.name, c.name, c.comment] for t in db.TABLES.values() for c in t.columns)
    assert got["comments"] == declared
    print(f"DuckDB {got['version']} ({python}) read the file", file=sys.stderr)
