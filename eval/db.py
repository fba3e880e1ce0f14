"""The project's DuckDB file (``<workdir>/gill.duckdb``): schema, locking-safe connections and writes.

DuckDB allows one writing process per file, and a second process gets an immediate ``IOException`` rather
than waiting. So every writer opens, writes and closes in one short transaction, and
:func:`connect` retries on a lock conflict for a bounded time. Users query the file with SQL, e.g.::

    duckdb work/demo/gill.duckdb "SELECT split, sum(successes)/sum(count) FROM download_shards GROUP BY split"

Rows are replaced by primary key, so re-running a stage updates its rows instead of duplicating them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DB_NAME = "gill.duckdb"

TABLES: dict[str, str] = {
    "download_shards": """
        split VARCHAR NOT NULL, shard VARCHAR NOT NULL, count INTEGER, successes INTEGER,
        failed_to_download INTEGER, failed_to_resize INTEGER, duration_s DOUBLE,
        PRIMARY KEY (split, shard)""",
    "download_failures": """
        split VARCHAR NOT NULL, shard VARCHAR NOT NULL, url VARCHAR, caption VARCHAR, status VARCHAR,
        error_message VARCHAR""",
    "train_metrics": """
        run_id VARCHAR NOT NULL, step INTEGER NOT NULL, name VARCHAR NOT NULL, value DOUBLE,
        PRIMARY KEY (run_id, step, name)""",
    "precompute_shards": """
        split VARCHAR NOT NULL, shard VARCHAR NOT NULL, count INTEGER, fingerprint VARCHAR, duration_s DOUBLE,
        samples_per_s DOUBLE, PRIMARY KEY (split, shard)""",
    "decision_candidates": """
        prompt_id INTEGER NOT NULL PRIMARY KEY, prompt VARCHAR, category VARCHAR, challenge VARCHAR, note VARCHAR,
        gen_image VARCHAR, ret_image VARCHAR, ret_key VARCHAR, ret_score DOUBLE, ret_scaled_score DOUBLE,
        checkpoint_id VARCHAR, sd_seed INTEGER, scene VARCHAR""",
    "runs": """
        run_id VARCHAR NOT NULL PRIMARY KEY, started_at TIMESTAMP, git_sha VARCHAR, preset VARCHAR, checkpoint VARCHAR,
        config JSON""",
    "samples": """
        run_id VARCHAR NOT NULL, benchmark VARCHAR NOT NULL, setting VARCHAR NOT NULL, system VARCHAR NOT NULL,
        seed INTEGER NOT NULL, sample_id VARCHAR NOT NULL, status VARCHAR, skip_reason VARCHAR,
        generated_path VARCHAR, reference_path VARCHAR, clip_sim DOUBLE, lpips DOUBLE, target_rank INTEGER,
        pool_size INTEGER, decision VARCHAR, p_ret DOUBLE, ret_key VARCHAR, sd_seed BIGINT, context_length INTEGER,
        scene_background_ok DOUBLE, scene_color_ok DOUBLE, scene_cell_ok DOUBLE, scene_color_cell_ok DOUBLE,
        scene_size_ok DOUBLE, scene_kind_ok DOUBLE, scene_all_ok DOUBLE, scene_score DOUBLE, prompt VARCHAR,
        context_paths VARCHAR,
        PRIMARY KEY (run_id, benchmark, setting, system, seed, sample_id)""",
    "results": """
        run_id VARCHAR NOT NULL, benchmark VARCHAR NOT NULL, setting VARCHAR NOT NULL, system VARCHAR NOT NULL,
        metric VARCHAR NOT NULL, mean DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n INTEGER, n_skipped INTEGER,
        n_seeds INTEGER, seed_std DOUBLE, metric_model VARCHAR, pool_size INTEGER,
        PRIMARY KEY (run_id, benchmark, setting, system, metric)""",
    "decision_eval": """
        run_id VARCHAR NOT NULL, created TIMESTAMP, checkpoint VARCHAR, checkpoint_id VARCHAR, votes VARCHAR,
        with_retrieval_score BOOLEAN, protocol VARCHAR NOT NULL, metric VARCHAR NOT NULL, value DOUBLE, n INTEGER,
        recipe VARCHAR,
        PRIMARY KEY (run_id, protocol, metric)""",
    "unsupported_systems": """
        run_id VARCHAR NOT NULL, benchmark VARCHAR NOT NULL, system VARCHAR NOT NULL, reason VARCHAR,
        PRIMARY KEY (run_id, benchmark, system)""",
}
"""Table name -> column definitions. ``download_failures`` rows are replaced per (split, shard)."""


def db_path(workdir: str | Path) -> Path:
    """The DuckDB file of a work folder."""
    return Path(workdir) / DB_NAME


@contextmanager
def connect(path: str | Path, read_only: bool = False, timeout_s: float = 60.0) -> Iterator[Any]:
    """Open the database (creating the schema when writable), retrying while another process holds the lock."""
    import duckdb

    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:
            if "lock" not in str(err).lower() or time.monotonic() > deadline:
                raise
            logger.debug("%s is locked by another process; retrying in %.2f s", path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        if not read_only:
            ensure_schema(con)
        yield con
    finally:
        con.close()


def column_definitions(columns: str) -> dict[str, str]:
    """Column name -> type of a :data:`TABLES` entry (constraints such as PRIMARY KEY left out)."""
    parts, depth, current = [], 0, ""
    for char in columns:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    out = {}
    for part in (p.split() for p in parts):
        if part and part[0].upper() not in ("PRIMARY", "UNIQUE", "FOREIGN", "CHECK"):
            out[part[0]] = part[1]
    return out


def ensure_schema(con: Any) -> None:
    """Create every table that does not exist yet, add the columns a newer gill added, (re)create the views."""
    for name, columns in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
        listed = con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = 'main'", [name]
        ).fetchall()
        present = {row[0] for row in listed}
        for column, kind in column_definitions(columns).items():
            if column not in present:
                con.execute(f"ALTER TABLE {name} ADD COLUMN {column} {kind}")
    from eval.bench_views import VIEWS

    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")


def ensure_database(path: str | Path) -> Path:
    """Create the file and any table or view this version of gill adds (e.g. to a database of an older version)."""
    with connect(path):
        pass
    return Path(path)


def replace_rows(
    path: str | Path, table: str, rows: Sequence[Mapping[str, Any]], scope: Mapping[str, Any] | None = None
) -> int:
    """Write ``rows`` into ``table`` in one transaction, replacing what they supersede.

    Args:
        path: the DuckDB file.
        table: a table of :data:`TABLES`.
        rows: dicts keyed by column name.
        scope: if given, first delete every row matching these column values (e.g. ``{"split": "train"}``),
            so the table holds exactly the new rows for that scope; otherwise rows replace by primary key.
    Returns:
        The number of rows written.
    """
    import pandas as pd

    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; known tables: {sorted(TABLES)}")
    frame = pd.DataFrame(list(rows))
    with connect(path) as con:
        con.execute("BEGIN TRANSACTION")
        if scope:
            where = " AND ".join(f"{column} = ?" for column in scope)
            con.execute(f"DELETE FROM {table} WHERE {where}", list(scope.values()))
        if len(frame):
            con.register("incoming", frame)
            verb = "INSERT INTO" if scope else "INSERT OR REPLACE INTO"
            con.execute(f"{verb} {table} BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
        con.execute("COMMIT")
    return len(frame)


def query(path: str | Path, sql: str, params: Sequence[Any] = ()) -> Any:
    """Run a read query and return a pandas DataFrame (a missing database is created empty first)."""
    if not Path(path).exists():
        ensure_database(path)
    with connect(path, read_only=True) as con:
        return con.execute(sql, list(params)).df()


USER_SQL_SETTINGS = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET lock_configuration = true",
)
"""Applied before a user's SQL: no file, network or extension access beyond the database, and no way to undo it."""


def user_query(path: str | Path, sql: str) -> Any:
    """Run a user's SQL (``gill db query``, ``gill report --sql``) read-only and sandboxed; a pandas DataFrame.

    The database is opened read-only, then external access is switched off and the configuration locked, so
    ``COPY ... TO``, ``read_csv('/etc/passwd')``, ``ATTACH``, ``INSTALL`` and ``LOAD`` fail with a permission
    error instead of writing files, reading the machine's files or reaching the network.
    """
    if not Path(path).exists():
        ensure_database(path)
    with connect(path, read_only=True) as con:
        for setting in USER_SQL_SETTINGS:
            con.execute(setting)
        return con.execute(sql).df()


def record_download(
    path: str | Path, split: str, shards: Sequence[Mapping[str, Any]], failures: Sequence[Mapping[str, Any]]
) -> None:
    """Store a split's download yield: its shard rows and failure rows replace that split's previous ones."""
    replace_rows(path, "download_shards", shards, scope={"split": split})
    replace_rows(path, "download_failures", failures, scope={"split": split})


def record_precompute(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store one row per precomputed feature shard (replacing by split and shard)."""
    replace_rows(path, "precompute_shards", rows)


def record_metrics(path: str | Path, run_id: str, step: int, values: Mapping[str, float]) -> None:
    """Store one step's named metrics for a training run (``train_metrics``: run_id, step, name, value)."""
    rows = [{"run_id": run_id, "step": step, "name": name, "value": float(v)} for name, v in values.items()]
    replace_rows(path, "train_metrics", rows)
