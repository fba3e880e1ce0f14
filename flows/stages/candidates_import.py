"""Loading the decision candidates into the judging store (:func:`import_candidates`), apart from the stage that
builds them (:mod:`flows.stages.candidates`): ``gill annotate serve`` re-imports them on start, and this module
imports no model stack (torch), so the judging commands start fast.
"""

from __future__ import annotations

import os

from annotations.store import JudgingStore, add_candidate_items
from flows.store import connect, db_path
from gill.errors import InputError

TABLE = "decision_candidates"
"""The DuckDB table of the candidates, in ``<workdir>/gill.duckdb``."""


def import_candidates(workdir: str | os.PathLike[str], store: JudgingStore | None = None) -> int:
    """Load the items from the DuckDB table ``decision_candidates`` of ``<workdir>/gill.duckdb`` into the judging
    store (idempotent: re-importing updates items by ``prompt_id`` and keeps their generated-image side). Returns the
    number of new items.

    Raises:
        InputError: the DuckDB file or the table is missing, or rows lack a prompt or image path.
    """
    path = db_path(workdir)
    if not path.exists():
        raise InputError(
            f"{path} does not exist", [], hint=f"the {TABLE} table is written there by the candidate stage"
        )
    with connect(path, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if TABLE not in tables:
            raise InputError(
                f"{path} has no table {TABLE}",
                [f"tables: {sorted(tables) or 'none'}"],
                hint="generate the retrieve-vs-generate candidates first",
            )
        cursor = con.execute(f"SELECT * FROM {TABLE} ORDER BY prompt_id")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    return add_candidate_items(store if store is not None else JudgingStore(workdir), rows, str(path))
