"""``gill annotate serve|add-judge|revoke-judge|status``: run the judging app, add and revoke judges, show
progress and agreement.

:func:`add_app_parsers` adds the four commands to the ``gill annotate`` subparsers (see
:func:`flows.command.annotate.add_annotate_parsers`). A typical session::

    gill annotate add-judge alice --workdir work/demo     # prints alice's login link
    gill annotate serve --workdir work/demo               # imports the candidates, prints the admin link
    gill annotate status --workdir work/demo
    gill annotate revoke-judge alice --workdir work/demo  # alice's link stops working; her votes stay

``serve`` checks every argument and binds its port before it writes anything: a refused or failed ``serve``
(a port in use, a bad ``--port`` or ``--admin-token``) leaves the store as it was, admin token and ``k`` included.
Without ``--judges-per-item`` the store's saved ``k`` is kept.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from annotations.app import create_app, install_token_redaction
from annotations.store import (
    ADMIN_TOKEN_HINT,
    HUMAN_PANEL,
    SIMULATED_PANEL,
    JudgingStore,
    admin_token_problems,
    store_path,
)
from flows.stages.candidates_import import import_candidates
from gill.errors import InputError

if TYPE_CHECKING:
    from annotations.store import JudgingStore

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
    """Check the arguments and bind the port (nothing written yet), then import the candidates, save ``k`` (when
    given) and the admin token, print the admin link, and serve the judging app until interrupted."""
    import uvicorn

    if args.admin_token is not None and (problems := admin_token_problems(args.admin_token)):
        raise InputError("--admin-token is refused; nothing was changed", problems, hint=ADMIN_TOKEN_HINT)
    sock = bind_socket(args.host, args.port)
    try:
        added = _import_items(args.workdir, JudgingStore(args.workdir))
        token = args.admin_token or secrets.token_urlsafe(32)
        app = create_app(args.workdir, judges_per_item=args.judges_per_item, admin_token=token)
        _print_serving(app.state.store, args, added, token)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info")
        install_token_redaction()  # after uvicorn's logging setup too (it keeps logger filters; belt and braces)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet); :class:`InputError` when that is not possible
    (the port is in use, the host is not an address of this machine)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn does
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as err:
        raise InputError(
            f"--host {host!r} cannot be resolved; nothing was changed",
            [str(err)],
            hint="give an address of this machine, e.g. 127.0.0.1 (the default) or 0.0.0.0",
        ) from err
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise InputError(
            f"cannot listen on {host} port {port}; nothing was changed",
            [err.strerror or str(err)],
            hint="another program (another `gill annotate serve`?) may use the port: stop it, or "
            "pick another with --port",
        ) from err
    return sock


def _import_items(workdir: Path, store: JudgingStore) -> int:
    """Import the candidates into ``store``; return how many are new. A failed import is a warning when the store
    already has items to serve, else the error."""

    try:
        return import_candidates(workdir, store)
    except InputError as err:
        if not store.count_items():
            raise
        _out(f"warning: candidates not re-imported, serving the {store.count_items()} stored item(s): {err.message}")
        return 0


def _print_serving(store: JudgingStore, args: argparse.Namespace, added: int, token: str) -> None:
    """What ``serve`` prints before it starts: items, judges, ``k``, the admin link."""

    people = store.judges(HUMAN_PANEL)
    others = [
        f"{len(store.judges(p))} {p.upper() if p == SIMULATED_PANEL else p} judge(s) in their own panel"
        for p in store.panels()
        if p != HUMAN_PANEL
    ]
    _out(
        f"{store.judgeable_items()} item(s) to judge ({added} new), {len(people)} person(s) judging, "
        f"{store.judges_per_item} judges per item; votes in {store.path}"
        + (f" ({'; '.join(others)}: they take no person's slot)" if others else "")
    )
    _out(f"admin page: {admin_link(args.host, args.port, token)}")
    if not people:
        _out(f"no people judging yet: gill annotate add-judge NAME --workdir {args.workdir} prints a judge's link")


def cmd_annotate_add_judge(args: argparse.Namespace) -> int:
    """Add a judge and print their personal login link (shown once: only a hash of the token is stored)."""

    judge, token = JudgingStore(args.workdir).add_judge(args.name)
    _out(f"judge {judge.name!r} added; their personal login link (keep it private, it is shown only once):")
    _out(login_link(args.host, args.port, token))
    return 0


def cmd_annotate_revoke_judge(args: argparse.Namespace) -> int:
    """Revoke a judge: their link and session stop working at once; their votes stay, marked as revoked."""
    store = _existing_store(args.workdir)
    judge = store.revoke_judge(args.name)
    votes = len(store.votes_of(judge))
    _out(
        f"judge {judge.name!r} revoked at {judge.revoked_at}: their login link and sessions no longer work; "
        f"their {votes} vote(s) stay in {store.path}, marked as from a revoked judge"
    )
    return 0


def _existing_store(workdir: Path) -> JudgingStore:
    """The judging store of ``workdir``; :class:`InputError` (and no file created) when there is none yet."""

    if not store_path(workdir).exists():
        raise InputError(
            f"{store_path(workdir)} does not exist: nothing has been judged in {workdir} yet",
            [],
            hint=f"start with gill annotate add-judge NAME --workdir {workdir}",
        )
    return JudgingStore(workdir)


def status_lines(workdir: Path) -> list[str]:
    """What ``gill annotate status`` prints (a revoked judge is marked ``revoked <when>``)."""

    store = _existing_store(workdir)
    lines = [
        f"{store.path}: {store.count_items()} item(s), {store.judgeable_items()} with images; "
        f"{store.judges_per_item} judges per item and panel"
    ]
    for panel in store.panels():
        label = "SIMULATED judges (answer-key panel, not people)" if panel == SIMULATED_PANEL else f"panel {panel}"
        lines.append(f"{label}: {store.complete_items(panel)} item(s) complete, {store.count_votes(panel)} vote(s)")
        judges = store.judge_progress(panel)
        lines.append("  judges:" if judges else "  judges: none yet")
        width = max((len(j.name) for j, _ in judges), default=0)
        lines += [
            f"    {j.name:<{width}}  {p.done} / {p.total} done"
            + (f"  (revoked {j.revoked_at})" if j.revoked_at else "")
            for j, p in judges
        ]
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
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _whole(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1 to 65535, got {value}; nothing was changed")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _add_workdir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        type=Path,
        required=True,
        help="work folder: candidates in gill.duckdb, votes in annotations/judging.sqlite",
    )


def _add_address(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"{what} (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port, 1 to 65535 (default {DEFAULT_PORT})")


def add_app_parsers(commands: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``add-judge``, ``revoke-judge`` and ``status`` to the ``gill annotate`` subparsers."""
    p = commands.add_parser("serve", help="serve the retrieve-vs-generate judging app")
    _add_workdir(p)
    _add_address(p, "address to bind")
    p.add_argument(
        "--judges-per-item",
        type=_positive,
        default=None,
        help="judges each item gets, saved in the store (default: the saved value, else 5)",
    )
    p.add_argument(
        "--admin-token",
        default=None,
        help="admin token to accept (default: a new random one, printed as the admin link)",
    )
    p.set_defaults(func=cmd_annotate_serve)

    p = commands.add_parser("add-judge", help="add a judge and print their personal login link")
    p.add_argument("name", help="the judge's name (unique)")
    _add_workdir(p)
    _add_address(p, "host to put in the link")
    p.set_defaults(func=cmd_annotate_add_judge)

    p = commands.add_parser("revoke-judge", help="revoke a judge: their link stops working, their votes stay")
    p.add_argument("name", help="the judge's name (as `gill annotate status` lists it)")
    _add_workdir(p)
    p.set_defaults(func=cmd_annotate_revoke_judge)

    p = commands.add_parser("status", help="judging progress per judge and agreement per question")
    _add_workdir(p)
    p.set_defaults(func=cmd_annotate_status)
