"""``gill annotate``: the judging commands of the ``gill`` CLI (votes in and out of the judging store, Label
Studio, the judging app, the confident labels and human baseline of a votes TSV), none of which imports the model
stack.

:func:`add_annotate_parsers` registers the ``annotate`` group on the top-level parser and returns the group's
subparsers, so more ``gill annotate <command>`` subcommands can be added to it. The commands that need the model
stack (:data:`STACK_COMMANDS`: ``build`` and ``simulate`` run stages) live in :mod:`flows.command.annotate_work`:
here they are deferred stubs (:func:`flows.command.defer`), so ``gill annotate status`` starts without torch and
``gill annotate build`` imports it when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from annotations import exchange
from annotations.label_studio import (
    VOTE_MODES,
    cmd_label_studio_pull,
    cmd_label_studio_setup,
    export_label_studio,
    import_label_studio,
)
from annotations.store import JudgingStore, store_path
from flows.command import add_group, defer
from flows.command.annotate_app import add_app_parsers
from flows.command.annotate_votes import add_aggregate, add_human_baseline
from gill.errors import InputError

STACK_COMMANDS = {
    "build": "candidates: an SD-baseline image and the top bank image per prompt",
    "simulate": "let the SIMULATED answer-key panel judge the world items (own panel)",
}
"""The ``gill annotate`` commands that need the model stack, and their help; their arguments and handlers are in
:mod:`flows.command.annotate_work`."""

STACK_REGISTRAR = "flows.command.annotate_work:add_annotate_parsers"
"""The registrar of ``gill annotate`` with the :data:`STACK_COMMANDS` (see :func:`flows.command.defer`)."""

Filler = Callable[[argparse.ArgumentParser], None]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- parsers ----------------------------------------------------------------------------------------------------------


def add_annotate_parsers(
    groups: argparse._SubParsersAction, stack: Mapping[str, Filler] | None = None
) -> argparse._SubParsersAction:
    """Register ``gill annotate``; return its subparsers for more. ``stack`` fills the parser of each of the
    :data:`STACK_COMMANDS` (:mod:`flows.command.annotate_work` passes its own); without it they are deferred."""
    commands = add_group(groups, "annotate")

    def stack_command(name: str) -> None:
        if stack is None:
            defer(commands, name, STACK_COMMANDS[name], STACK_REGISTRAR)
        else:
            stack[name](commands.add_parser(name, help=STACK_COMMANDS[name]))

    add_aggregate(
        commands.add_parser("aggregate", help="confident labels of a votes TSV (official rule), official layout")
    )
    add_human_baseline(
        commands.add_parser("human-baseline", help="human macro-F1 (official and leave-one-out) and agreement")
    )
    stack_command("build")

    p = commands.add_parser("export", help="export the judging store: official-tsv, label-studio or html-bundle")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--format", choices=("official-tsv", "label-studio", "html-bundle"), required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--complete-only", action="store_true", help="official-tsv: only items with all k votes")
    p.add_argument(
        "--panel",
        default="human",
        help="whose votes (official-tsv; label-studio with --votes predictions): 'human' (people, default) or "
        "'simulated' (answer-key judges)",
    )
    p.add_argument(
        "--votes",
        choices=VOTE_MODES,
        default="none",
        help="label-studio: leave votes out (default) or offer them as predictions, never annotations",
    )
    p.set_defaults(func=cmd_annotate_export)
    p = commands.add_parser("import", help="import votes (default: the shipped PartiPrompts votes, official-tsv)")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--format", choices=("official-tsv", "label-studio", "html-bundle"), default="official-tsv")
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="official-tsv: ALIGNMENT [REALISM] (default: the shipped files); label-studio: the JSON "
        "export; html-bundle: votes-<bundle>-<name>.json files",
    )
    p.add_argument("--panel", default="human", help="the panel the votes go to (default: human, i.e. people)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a judge's stored vote when the import differs (default: refuse)",
    )
    p.set_defaults(func=cmd_annotate_import)

    stack_command("simulate")

    _add_label_studio_parsers(commands)

    add_app_parsers(commands)
    return commands


def _add_label_studio_parsers(commands: argparse._SubParsersAction) -> None:
    """``label-studio-setup`` and ``label-studio-pull`` (see docs/label-studio.md)."""

    def connection(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workdir", type=Path, required=True, help="the work folder of the judging store")
        p.add_argument("--url", help="Label Studio (default: $LABEL_STUDIO_URL, else http://localhost:8080)")
        p.add_argument("--token", help="personal access token or legacy token (default: $LABEL_STUDIO_API_KEY)")

    p = commands.add_parser(
        "label-studio-setup", help="export the items for Label Studio; create its project, storage, tasks"
    )
    connection(p)
    p.add_argument(
        "--out",
        type=Path,
        help="export folder (default: W/annotations/label-studio); Label Studio's "
        "LOCAL_FILES_DOCUMENT_ROOT must be this folder (or --document-root)",
    )
    p.add_argument("--title", help="project title")
    p.add_argument(
        "--votes",
        choices=VOTE_MODES,
        default="none",
        help="leave the store's votes out (default) or offer them as predictions",
    )
    p.add_argument("--document-root", type=Path, help="the LOCAL_FILES_DOCUMENT_ROOT image urls are relative to")
    p.add_argument("--image-prefix", help="image url prefix (default /data/local-files/?d=)")
    p.add_argument("--export-only", action="store_true", help="write the export only; do not call Label Studio")
    p.set_defaults(func=cmd_label_studio_setup)

    p = commands.add_parser("label-studio-pull", help="export a Label Studio project and import its votes")
    connection(p)
    p.add_argument("--project", type=int, required=True, help="the Label Studio project id")
    p.add_argument(
        "--format",
        choices=("JSON", "JSON_MIN"),
        default="JSON",
        help="export format (default JSON: the only one that counts skipped annotations)",
    )
    p.add_argument("--save", type=Path, help="where to keep the export (default: W/annotations/...)")
    p.add_argument("--panel", default="human", help="the panel the votes go to (default: human)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a judge's stored vote when the import differs (default: refuse)",
    )
    p.set_defaults(func=cmd_label_studio_pull)


def cmd_annotate_export(args: argparse.Namespace) -> int:
    """Write the store's items and votes in one of the exchange formats."""

    if not store_path(args.workdir).is_file():
        raise InputError(
            f"no judging store in {args.workdir}",
            [f"{store_path(args.workdir)} does not exist"],
            hint="pass the --workdir that `gill annotate build` (or the pipeline) used",
        )
    store = JudgingStore(args.workdir)
    if args.format == "official-tsv":
        paths = exchange.export_official_tsv(store, args.out, complete_only=args.complete_only, panel=args.panel)
    elif args.format == "label-studio":
        export = export_label_studio(store, args.out, votes=args.votes, panel=args.panel)
        _out(export.describe())
        paths = [export.tasks, export.label_config]
    else:
        paths = [exchange.export_html_bundle(store, args.out)]
    for path in paths:
        _out(f"wrote {path}")
    return 0


def cmd_annotate_import(args: argparse.Namespace) -> int:
    """Read votes into the store (the shipped PartiPrompts votes by default)."""

    store = JudgingStore(args.workdir)
    if args.format == "official-tsv":
        if len(args.paths) > 2:
            raise InputError(
                "official-tsv takes at most two files", [f"got {len(args.paths)}"], hint="ALIGNMENT.tsv [REALISM.tsv]"
            )
        result = exchange.import_official_tsv(store, *args.paths, panel=args.panel, overwrite=args.overwrite)
    elif args.format == "label-studio":
        if len(args.paths) != 1:
            raise InputError("label-studio takes one JSON export", [f"got {len(args.paths)} paths"])

        result = import_label_studio(store, args.paths[0], panel=args.panel, overwrite=args.overwrite)
    else:
        if not args.paths:
            raise InputError("html-bundle needs the votes-<bundle>-<name>.json files", [])
        result = exchange.import_bundle_votes(store, args.paths, panel=args.panel, overwrite=args.overwrite)
    _out(f"imported into {store.path} (panel {args.panel}): {result.describe()}")
    return 0
