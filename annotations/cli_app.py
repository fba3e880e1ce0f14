"""``gill annotate serve|add-judge|status``: run the judging app, add judges, show progress and agreement.

:func:`add_app_parsers` adds the three commands to the ``gill annotate`` subparsers (see
:func:`annotations.cli.add_annotate_parsers`). A typical session::

    gill annotate add-judge alice --workdir work/demo     # prints alice's login link
    gill annotate serve --workdir work/demo               # imports the candidates, prints the admin link
    gill annotate status --workdir work/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gill.errors import InputError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def login_link(host: str, port: int, token: str) -> str:
    """A judge's personal login link."""
    shown = f"[{host}]" if ":" in host else host  # IPv6 literal
    return f"http://{shown}:{port}/judge?token={token}"


def admin_link(host: str, port: int, token: str) -> str:
    """The admin page's link."""
    return login_link(host, port, token).replace("/judge?", "/admin?", 1)


# -- handlers ---------------------------------------------------------------------------------------------------------


def cmd_annotate_serve(args: argparse.Namespace) -> int:
    """Import the candidates, print the admin link, and serve the judging app until interrupted."""
    import uvicorn

    from annotations.app import create_app
    from annotations.store import HUMAN_PANEL, SIMULATED_PANEL, JudgingStore, import_candidates

    store = JudgingStore(args.workdir, judges_per_item=args.judges_per_item)
    try:
        added = import_candidates(args.workdir, store)
    except InputError as err:
        if not store.count_items():
            raise
        added = 0
        _out(f"warning: candidates not re-imported, serving the {store.count_items()} stored item(s): {err.message}")
    token = args.admin_token or store.new_admin_token()
    app = create_app(args.workdir, judges_per_item=args.judges_per_item, admin_token=token)
    people = store.judges(HUMAN_PANEL)
    others = [f"{len(store.judges(p))} {p.upper() if p == SIMULATED_PANEL else p} judge(s) in their own panel"
              for p in store.panels() if p != HUMAN_PANEL]  # fmt: skip
    _out(f"{store.judgeable_items()} item(s) to judge ({added} new), {len(people)} person(s) judging, "
         f"{store.judges_per_item} judges per item; votes in {store.path}"
         + (f" ({'; '.join(others)}: they take no person's slot)" if others else ""))  # fmt: skip
    _out(f"admin page: {admin_link(args.host, args.port, token)}")
    if not people:
        _out(f"no people judging yet: gill annotate add-judge NAME --workdir {args.workdir} prints a judge's link")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_annotate_add_judge(args: argparse.Namespace) -> int:
    """Add a judge and print their personal login link (shown once: only a hash of the token is stored)."""
    from annotations.store import JudgingStore

    judge, token = JudgingStore(args.workdir).add_judge(args.name)
    _out(f"judge {judge.name!r} added; their personal login link (keep it private, it is shown only once):")
    _out(login_link(args.host, args.port, token))
    return 0


def status_lines(workdir: Path) -> list[str]:
    """What ``gill annotate status`` prints."""
    from annotations.store import SIMULATED_PANEL, JudgingStore, store_path

    if not store_path(workdir).exists():
        raise InputError(f"{store_path(workdir)} does not exist: nothing has been judged in {workdir} yet", [],
                         hint=f"start with gill annotate add-judge NAME --workdir {workdir}")  # fmt: skip
    store = JudgingStore(workdir)
    lines = [f"{store.path}: {store.count_items()} item(s), {store.judgeable_items()} with images; "
             f"{store.judges_per_item} judges per item and panel"]  # fmt: skip
    for panel in store.panels():
        label = "SIMULATED judges (answer-key panel, not people)" if panel == SIMULATED_PANEL else f"panel {panel}"
        lines.append(f"{label}: {store.complete_items(panel)} item(s) complete, {store.count_votes(panel)} vote(s)")
        judges = store.judge_progress(panel)
        lines.append("  judges:" if judges else "  judges: none yet")
        width = max((len(j.name) for j, _ in judges), default=0)
        lines += [f"    {j.name:<{width}}  {p.done} / {p.total} done" for j, p in judges]
        lines.append("  agreement (official votes gen/ret/same):")
        lines += [f"    {a.describe()}" for a in store.agreement(panel)]
    return lines


def cmd_annotate_status(args: argparse.Namespace) -> int:
    """Print progress per judge, items complete and agreement per question."""
    for line in status_lines(args.workdir):
        _out(line)
    return 0


# -- parsers ----------------------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_workdir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, required=True,
                   help="work folder: candidates in gill.duckdb, votes in annotations/judging.sqlite")  # fmt: skip


def _add_address(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"{what} (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")


def add_app_parsers(commands: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``add-judge`` and ``status`` to the ``gill annotate`` subparsers."""
    p = commands.add_parser("serve", help="serve the retrieve-vs-generate judging app")
    _add_workdir(p)
    _add_address(p, "address to bind")
    p.add_argument("--judges-per-item", type=_positive, default=5, help="judges each item gets (default 5)")
    p.add_argument("--admin-token", default=None,
                   help="admin token to accept (default: a new random one, printed as the admin link)")  # fmt: skip
    p.set_defaults(func=cmd_annotate_serve)

    p = commands.add_parser("add-judge", help="add a judge and print their personal login link")
    p.add_argument("name", help="the judge's name (unique)")
    _add_workdir(p)
    _add_address(p, "host to put in the link")
    p.set_defaults(func=cmd_annotate_add_judge)

    p = commands.add_parser("status", help="judging progress per judge and agreement per question")
    _add_workdir(p)
    p.set_defaults(func=cmd_annotate_status)
