"""The project's DuckDB file (``<workdir>/gill.duckdb``): schema, locking-safe connections and writes.

DuckDB allows one writing process per file, and a second process gets an immediate ``IOException`` rather
than waiting. So every writer opens, writes and closes in one short transaction, and
:func:`connect` retries on a lock conflict for a bounded time. Users query the file with SQL, e.g.::

    duckdb work/demo/gill.duckdb "SELECT split, sum(successes)/sum(count) FROM download_shards GROUP BY split"

with any DuckDB from 1.1 on: gill runs DuckDB 2 but writes the file in the 1.1 storage format
(:data:`STORAGE_VERSION`), and converts a file an earlier gill wrote in DuckDB 2's own format the next time it
opens it for writing (:func:`convert_storage`). Every table and column carries a description::

    SELECT table_name, column_name, comment FROM duckdb_columns() WHERE table_name = 'samples'

Rows are replaced by primary key, so re-running a stage updates its rows instead of duplicating them.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from flows.store_views import VIEWS
from flows.workdir import DATABASE_FILE

logger = logging.getLogger(__name__)

DB_NAME = DATABASE_FILE


@dataclass(frozen=True)
class Column:
    """One column of a gill table: its name, DuckDB type and a one-line description (stored as its comment)."""

    name: str
    type: str
    comment: str


@dataclass(frozen=True)
class Table:
    """A table of the store: its description, columns and primary key (key columns are NOT NULL)."""

    name: str
    comment: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        unknown = [k for k in self.key if k not in names]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: key columns {unknown} unknown or a column repeated in {names}")

    @property
    def column_types(self) -> dict[str, str]:
        """Column name -> DuckDB type."""
        return {c.name: c.type for c in self.columns}

    def definition(self) -> str:
        """The column list of ``CREATE TABLE``."""
        parts = [f"{c.name} {c.type}{' NOT NULL' if c.name in self.key else ''}" for c in self.columns]
        if self.key:
            parts.append(f"PRIMARY KEY ({', '.join(self.key)})")
        return ", ".join(parts)


def _table(name: str, comment: str, key: tuple[str, ...], *columns: tuple[str, str, str]) -> Table:
    return Table(name, comment, tuple(Column(*c) for c in columns), key)


_SPLIT = ("split", "VARCHAR", "Dataset split: train or val.")
_RUN = ("run_id", "VARCHAR", "Benchmark run (runs.run_id).")
_BENCHMARK = (
    "benchmark",
    "VARCHAR",
    "Benchmark: vist, visdial, cc3m-fid, or vist-retrieval / visdial-retrieval (recall@k of the same settings).",
)
_SETTING = (
    "setting",
    "VARCHAR",
    "Setting of the benchmark: VIST 1cap, 5cap or 5cap4img; VisDial 1round, 5rounds or 10rounds; cc3m-fid the split.",
)
_SYSTEM = (
    "system",
    "VARCHAR",
    "System: gill, gill-gen, gill-ret, gill-oracle, sd, clip-retrieval or fromage-retrieval (glide: unsupported).",
)
_CHECKPOINT_ID = (
    "checkpoint_id",
    "VARCHAR",
    "Checkpoint id: the first 16 hex characters of the sha256 of its adapters.safetensors.",
)
_SCENE = "Synthetic shapes world only (NULL on real data): "

DECISION_CONFUSION = (("gen", "gen"), ("gen", "ret"), ("ret", "gen"), ("ret", "ret"))
"""(judges' label, prediction) of the confusion-count columns of ``decision_eval``, ``true_<label>_pred_<label>``,
in ``[true][predicted]`` row order (gen = 0, ret = 1)."""
DECISION_CONFUSION_COLUMNS = tuple(f"true_{true}_pred_{pred}" for true, pred in DECISION_CONFUSION)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _table(
            "download_shards",
            "Yield of each completed img2dataset shard of a CC3M download; a download run replaces its split's rows.",
            ("split", "shard"),
            _SPLIT,
            ("shard", "VARCHAR", "Shard name: the stem of its tar under data/cc3m/<split>/ (e.g. 00000)."),
            ("count", "INTEGER", "Input rows (caption and url) assigned to the shard."),
            ("successes", "INTEGER", "Images downloaded, decoded and stored in the shard."),
            ("failed_to_download", "INTEGER", "Rows whose url could not be fetched."),
            ("failed_to_resize", "INTEGER", "Rows whose image was fetched but could not be decoded or resized."),
            ("duration_s", "DOUBLE", "Wall time img2dataset spent on the shard, in seconds."),
        ),
        _table(
            "download_failures",
            "Input rows of completed download shards that did not become a sample; replaced per split on each run.",
            (),
            _SPLIT,
            ("shard", "VARCHAR", "Shard the row was assigned to (download_shards.shard)."),
            ("url", "VARCHAR", "The row's image url."),
            ("caption", "VARCHAR", "The row's caption."),
            ("status", "VARCHAR", "img2dataset status of the row (e.g. failed_to_download, failed_to_resize)."),
            ("error_message", "VARCHAR", "img2dataset's error text for the row."),
        ),
        _table(
            "train_metrics",
            "Metrics of training runs (gill train), one row per run, optimizer step and metric name.",
            ("run_id", "step", "name"),
            ("run_id", "VARCHAR", "Training run id: its folder under runs/ in the work folder."),
            ("step", "INTEGER", "Optimizer step the value was logged at."),
            ("name", "VARCHAR", "Metric name: a training loss or accuracy, or a validation figure (val_ prefix)."),
            ("value", "DOUBLE", "Value of the metric at that step."),
        ),
        _table(
            "precompute_shards",
            "One row per precomputed feature shard (gill data precompute), replaced by split and shard.",
            ("split", "shard"),
            _SPLIT,
            (
                "shard",
                "VARCHAR",
                "Image shard name (its tar's stem); the features are in features/cc3m/<split>/<shard>/.",
            ),
            ("count", "INTEGER", "Rows (image and caption pairs) in the feature shard."),
            (
                "fingerprint",
                "VARCHAR",
                "sha256 of every input that determines the stored arrays (a rerun keeps a match).",
            ),
            (
                "duration_s",
                "DOUBLE",
                "Wall time of the computation in seconds (for a skipped shard: of the run that wrote it).",
            ),
            ("samples_per_s", "DOUBLE", "count / duration_s of that computation."),
        ),
        _table(
            "decision_candidates",
            "Prompts to judge for the generate-or-retrieve decision: an SD image and GILL's top retrieved bank image.",
            ("prompt_id",),
            ("prompt_id", "INTEGER", "Row number of the prompt in its prompts file (0-based), stable across runs."),
            ("prompt", "VARCHAR", "Prompt text."),
            ("category", "VARCHAR", "PartiPrompts category (Shapes world for synthetic world prompts)."),
            ("challenge", "VARCHAR", "PartiPrompts challenge (empty when the prompts file has none)."),
            ("note", "VARCHAR", "PartiPrompts note (empty when the prompts file has none)."),
            ("gen_image", "VARCHAR", "Stable Diffusion's image for the prompt (PNG), relative to the work folder."),
            ("ret_image", "VARCHAR", "GILL's top retrieved bank image (PNG), relative to the work folder."),
            ("ret_key", "VARCHAR", "Bank key of the retrieved image."),
            ("ret_score", "DOUBLE", "Cosine similarity of the prompt's retrieval embedding and the retrieved image."),
            ("ret_scaled_score", "DOUBLE", "ret_score times the checkpoint's exp(logit_scale), the official scale."),
            _CHECKPOINT_ID,
            ("sd_seed", "INTEGER", "Seed of the Stable Diffusion generator (the same for every prompt)."),
            ("scene", "VARCHAR", "JSON of the prompt's true scene (synthetic world prompts), else NULL."),
        ),
        _table(
            "runs",
            "One row per benchmark run (gill bench): what every samples and results row with its run_id comes from.",
            ("run_id",),
            (
                "run_id",
                "VARCHAR",
                "Run id: checkpoint id prefix and a digest of image options and metric models, or --run-id.",
            ),
            ("started_at", "TIMESTAMP", "When the run was first registered (UTC, stored without time zone)."),
            ("git_sha", "VARCHAR", "Git commit of the gill source that ran it (NULL outside a git checkout)."),
            ("preset", "VARCHAR", "Model preset of the checkpoint's config (e.g. tiny, paper)."),
            ("checkpoint", "VARCHAR", "Checkpoint folder that was benchmarked, relative to the work folder."),
            ("config", "JSON", "The checkpoint's model config (model), the run identity (bench) and the work folder."),
        ),
        _table(
            "samples",
            "One row per benchmark run, benchmark, setting, system, seed and sample: scored (status ok) or skipped.",
            ("run_id", "benchmark", "setting", "system", "seed", "sample_id"),
            _RUN,
            _BENCHMARK,
            _SETTING,
            _SYSTEM,
            ("seed", "INTEGER", "Benchmark seed (systems that use no seed are scored at the first seed only)."),
            ("sample_id", "VARCHAR", "Sample id within the benchmark (e.g. the VIST story or VisDial dialog)."),
            ("status", "VARCHAR", "ok (scored) or skipped."),
            (
                "skip_reason",
                "VARCHAR",
                "Why the sample was skipped (unreadable image, no image produced, ...), else NULL.",
            ),
            ("generated_path", "VARCHAR", "The system's image (PNG), relative to the work folder."),
            (
                "reference_path",
                "VARCHAR",
                "The ground-truth image the system's image is scored against, relative to the work folder.",
            ),
            (
                "clip_sim",
                "DOUBLE",
                "CLIP cosine similarity of the system's and the reference image (higher is better).",
            ),
            ("lpips", "DOUBLE", "LPIPS distance between the system's and the reference image (lower is better)."),
            (
                "target_rank",
                "INTEGER",
                "Retrieval benchmarks: 0-based rank of the true image in the pool (recall@k: rank < k).",
            ),
            ("pool_size", "INTEGER", "Retrieval benchmarks: images in the pool (the setting's readable samples)."),
            ("decision", "VARCHAR", "GILL's generate-or-retrieve decision: gen or ret (NULL for systems without one)."),
            ("p_ret", "DOUBLE", "Probability of retrieving given by GILL's decision head."),
            ("ret_key", "VARCHAR", "Bank key of the retrieved image, when the system retrieved."),
            ("sd_seed", "BIGINT", "Stable Diffusion seed derived from the seed and sample id (systems that generate)."),
            (
                "context_length",
                "INTEGER",
                "Context: VIST prompt items (captions + images), VisDial rounds, 1 for CC3M.",
            ),
            (
                "scene_background_ok",
                "DOUBLE",
                _SCENE + "1.0 when the background read back from the image is right, else 0.0.",
            ),
            ("scene_color_ok", "DOUBLE", _SCENE + "fraction of described shapes with the right colour."),
            ("scene_cell_ok", "DOUBLE", _SCENE + "fraction of described shapes in the right 3x3 grid cell."),
            ("scene_color_cell_ok", "DOUBLE", _SCENE + "fraction of described shapes with both colour and cell right."),
            ("scene_size_ok", "DOUBLE", _SCENE + "fraction of described shapes with the right size."),
            ("scene_kind_ok", "DOUBLE", _SCENE + "fraction of described shapes with the right kind."),
            (
                "scene_all_ok",
                "DOUBLE",
                _SCENE + "1.0 when the background and every attribute of every shape are right.",
            ),
            ("scene_score", "DOUBLE", _SCENE + "mean of the background, colour, cell, size and kind scores."),
            ("prompt", "VARCHAR", "The sample's text (what the text-only baselines read)."),
            (
                "context_paths",
                "VARCHAR",
                "JSON list of the prompt's images, relative to the work folder (null: not found).",
            ),
        ),
        _table(
            "results",
            "Aggregates of samples per benchmark run, benchmark, setting, system and metric; recomputed on each run.",
            ("run_id", "benchmark", "setting", "system", "metric"),
            _RUN,
            _BENCHMARK,
            _SETTING,
            _SYSTEM,
            ("metric", "VARCHAR", "Metric: clip_sim, lpips, recall@1, recall@5, recall@10, fid or a scene metric."),
            ("mean", "DOUBLE", "Mean over samples of their mean over seeds (fid: mean of the per-seed FIDs)."),
            ("ci_low", "DOUBLE", "Lower end of the bootstrap confidence interval of mean (95% unless configured)."),
            ("ci_high", "DOUBLE", "Upper end of the bootstrap confidence interval of mean."),
            ("n", "INTEGER", "Samples the figure is computed on."),
            ("n_skipped", "INTEGER", "Samples skipped at every seed for this system (not in the figure)."),
            ("n_seeds", "INTEGER", "Seeds the figure averages."),
            ("seed_std", "DOUBLE", "Standard deviation of the per-seed means (NULL with one seed)."),
            ("metric_model", "VARCHAR", "Model that computed the metric (CLIP, LPIPS or Inception weights, ...)."),
            ("pool_size", "INTEGER", "Retrieval metrics: size of the largest retrieval pool."),
        ),
        _table(
            "decision_eval",
            "Figures of the generate-or-retrieve classifier (gill decision fit): one row per fit, protocol and metric.",
            ("run_id", "protocol", "metric"),
            ("run_id", "VARCHAR", "Fit id: decision-<UTC time>-<random hex>."),
            ("created", "TIMESTAMP", "When the fit ran (UTC, stored without time zone)."),
            (
                "checkpoint",
                "VARCHAR",
                "Checkpoint whose language-model states are the features, relative to the work folder.",
            ),
            _CHECKPOINT_ID,
            ("votes", "VARCHAR", "Votes TSV the classifier was fit on, relative to the work folder."),
            ("with_retrieval_score", "BOOLEAN", "True when the retrieval score was a feature (the bank-aware head)."),
            (
                "protocol",
                "VARCHAR",
                "official-<n train> split, cv<k> (stratified k-fold), human or <panel>-panel baseline.",
            ),
            ("metric", "VARCHAR", "macro_f1, best_on_test_f1, macro_f1_std, macro_f1_fold<k>, macro_f1_official, ..."),
            ("value", "DOUBLE", "The figure: a macro F1 in [0, 1], or its standard deviation over folds."),
            ("n", "INTEGER", "Examples the figure is computed on (NULL for per-fold and leave-one-out figures)."),
            ("recipe", "VARCHAR", "official (the notebook's loop) or balanced (standardised features, class weights)."),
            (
                "ci_low",
                "DOUBLE",
                "macro_f1 of an official-<n> split: lower end of its 95% percentile-bootstrap interval over the "
                "test examples (NULL on other rows and in fits of an older gill).",
            ),
            ("ci_high", "DOUBLE", "Upper end of that interval (NULL where ci_low is)."),
            *(
                (
                    f"true_{true}_pred_{pred}",
                    "INTEGER",
                    f"macro_f1 rows: examples labelled {true} by the judges that the classifier predicted {pred} "
                    "(official split: its test part; cv<k>: every example, predicted by the fold that held it out). "
                    "NULL on other rows and in fits of an older gill.",
                )
                for true, pred in DECISION_CONFUSION
            ),
        ),
        _table(
            "unsupported_systems",
            "Systems a benchmark run lists but cannot run, with the reason (no number is ever given for them).",
            ("run_id", "benchmark", "system"),
            _RUN,
            _BENCHMARK,
            _SYSTEM,
            ("reason", "VARCHAR", "Why the system was not run."),
        ),
    )
}
"""Table name -> :class:`Table`, the one declaration of the store's schema and its column comments.
``download_failures`` has no key: a download run replaces its split's rows."""


def db_path(workdir: str | Path) -> Path:
    """The DuckDB file of a work folder."""
    return Path(workdir) / DB_NAME


STORAGE_VERSION = "v1.1.0"
"""The DuckDB storage format gill writes new files in (``storage_compatibility_version``), although gill itself
runs DuckDB 2: readable by DuckDB 1.1.0 and every later client (CLI, Python, R, JDBC, ... of 1.1 to 1.5, and
2.x). DuckDB 2's default format (storage version 69) is readable by DuckDB 2 only.

Why 1.1: the schema needs nothing newer (``JSON``, ``COMMENT ON``, ``FILTER``, ``UNION ALL BY NAME`` and
``LATERAL`` all exist in 1.0; ``INSERT OR REPLACE ... BY NAME`` is only run by the writer, never stored), but
DuckDB 1.0 cannot load a table with a primary key written by DuckDB 2 even in the ``v1.0.0`` format
("Failed to deserialize: expected end of object, but found field id: 103"), so 1.0 is out whatever gill
asks for; ``v1.0.0`` and ``v1.1.0`` files are otherwise the same (header version 64). Checked by
``tests/test_db_compat.py`` with a real DuckDB 1.1 (``make duckdb-1x``)."""

STORAGE_VERSION_NUMBER = 64
"""The version number in the header of a file in :data:`STORAGE_VERSION`. DuckDB 1.1 reads 64, 1.2 up to 65,
1.3 66, 1.4 67, 1.5 68; a file in DuckDB 2's own format has a larger number there (999 from DuckDB 2.0.0, which
DuckDB 1.5 reports as "version number 69")."""

_HEADER = struct.Struct("<8x4sQ")
"""A DuckDB file starts with a checksum (8 bytes), the magic ``DUCK`` and the storage version number (uint64)."""


def storage_version_number(path: str | Path) -> int | None:
    """The storage version number in a DuckDB file's header; None when the file is missing or not a DuckDB file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER.size)
    except OSError:
        return None
    if len(head) < _HEADER.size:
        return None
    magic, number = _HEADER.unpack(head)
    return int(number) if magic == b"DUCK" else None


def _open(path: Path, read_only: bool, deadline: float) -> Any:
    """``duckdb.connect`` in :data:`STORAGE_VERSION` (for a new file), retrying while another process holds the lock."""

    delay = 0.05
    while True:
        try:
            return duckdb.connect(
                str(path), read_only=read_only, config={"storage_compatibility_version": STORAGE_VERSION}
            )
        except duckdb.IOException as err:
            if "lock" not in str(err).lower() or time.monotonic() > deadline:
                raise
            logger.debug("%s is locked by another process; retrying in %.2f s", path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextmanager
def connect(path: str | Path, read_only: bool = False, timeout_s: float = 60.0) -> Iterator[Any]:
    """Open the database (creating the schema when writable), retrying while another process holds the lock.

    A new file is written in :data:`STORAGE_VERSION`, so DuckDB 1.x clients can read it. Opened for writing, a
    file in a newer format (DuckDB 2's default, written by gill before it pinned the format) is first converted
    in place, see :func:`convert_storage`.
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    if not read_only and (storage_version_number(path) or 0) > STORAGE_VERSION_NUMBER:
        convert_storage(path, deadline=deadline)
    con = _open(path, read_only, deadline)
    try:
        if not read_only:
            con.execute("BEGIN TRANSACTION")
            ensure_schema(con)
            con.execute("COMMIT")
        yield con
    finally:
        con.close()


def convert_storage(path: str | Path, *, deadline: float | None = None) -> bool:
    """Rewrite ``path`` in :data:`STORAGE_VERSION` if it uses a newer storage format; True when it converted.

    Holding the file's write lock, it copies every table, view, comment and constraint into a new file next to it
    (``COPY FROM DATABASE``), checks that every table has the same number of rows, and atomically replaces the
    original with it (``os.replace``), so a failure at any point leaves the original untouched.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.converting")
    scratch = (tmp, tmp.with_name(tmp.name + ".wal"))
    con = _open(path, False, time.monotonic() + 60.0 if deadline is None else deadline)
    try:
        if (storage_version_number(path) or 0) <= STORAGE_VERSION_NUMBER:
            return False  # another process converted it while this one waited for the lock
        for leftover in scratch:  # of a conversion that was killed (this process holds the lock now)
            leftover.unlink(missing_ok=True)
        (tags,) = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
        found = (tags or {}).get("storage_version", "newer than " + STORAGE_VERSION)
        logger.warning(
            "%s uses storage format %s, which DuckDB 1.x cannot read: converting it to %s (a one-time copy)",
            path,
            found,
            STORAGE_VERSION,
        )
        con.execute("CHECKPOINT")
        source = con.execute("SELECT current_database()").fetchone()[0]
        con.execute(f"ATTACH '{_sql_text(str(tmp))}' AS gill_converted (STORAGE_VERSION '{STORAGE_VERSION}')")
        try:
            con.execute(f"COPY FROM DATABASE {_identifier(source)} TO gill_converted")
            tables = con.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ?", [source]
            ).fetchall()
            for schema, table in tables:
                name = f"{_identifier(schema)}.{_identifier(table)}"
                before = con.execute(f"SELECT count(*) FROM {_identifier(source)}.{name}").fetchone()[0]
                after = con.execute(f"SELECT count(*) FROM gill_converted.{name}").fetchone()[0]
                if before != after:
                    raise RuntimeError(f"converting {path}: table {name} has {after} rows in the copy, {before} before")
            con.execute("CHECKPOINT gill_converted")
        finally:
            con.execute("DETACH gill_converted")
        os.replace(tmp, path)  # still holding the original's lock: a waiting writer retries and opens the new file
    except BaseException:
        for leftover in scratch:
            leftover.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    logger.info("%s converted to storage format %s", path, STORAGE_VERSION)
    return True


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ensure_schema(con: Any) -> None:
    """Create every table that does not exist yet, add the columns a newer gill added, set the table and column
    comments of :data:`TABLES` where they differ, (re)create the views."""
    listed = con.execute(
        "SELECT table_name, column_name, comment FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main'"
    ).fetchall()
    present = {(table, column): comment for table, column, comment in listed}
    table_comments = dict(
        con.execute(
            "SELECT table_name, comment FROM duckdb_tables() "
            "WHERE database_name = current_database() AND schema_name = 'main'"
        ).fetchall()
    )
    for name, table in TABLES.items():
        if name not in table_comments:
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({table.definition()})")
            present.update(dict.fromkeys(((name, c.name) for c in table.columns), None))
        if table_comments.get(name) != table.comment:
            con.execute(f"COMMENT ON TABLE {name} IS '{_sql_text(table.comment)}'")
        for column in table.columns:
            if (name, column.name) not in present:
                con.execute(f"ALTER TABLE {name} ADD COLUMN {column.name} {column.type}")
            if present.get((name, column.name)) != column.comment:
                con.execute(f"COMMENT ON COLUMN {name}.{column.name} IS '{_sql_text(column.comment)}'")

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
