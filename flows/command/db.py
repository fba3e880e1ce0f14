"""``gill db query``: SQL over the project store ``<workdir>/gill.duckdb`` (no model stack)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.command import add_group
from flows.stages.bench_report import run_sql


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_db_query(args: argparse.Namespace) -> int:
    """Run SQL against <workdir>/gill.duckdb and print the result table (the same function as ``gill report --sql``)."""

    _out(run_sql(args.workdir, args.sql, "csv" if args.csv else "table", max_rows=args.max_rows).rstrip("\n"))
    return 0


def add_db_parsers(groups: argparse._SubParsersAction) -> None:
    """Register ``db query`` on the top-level ``gill`` parser."""
    db = add_group(groups, "db")
    p = db.add_parser("query", help="run SQL against <workdir>/gill.duckdb")
    p.add_argument("sql", help='e.g. "SELECT * FROM download_shards"')
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--max-rows", type=int, default=200)
    p.set_defaults(func=cmd_db_query)
