"""``gill annotate aggregate|human-baseline``: the votes commands of the ``gill`` CLI.

:func:`add_annotate_parsers` registers the ``annotate`` group on the top-level parser and returns the group's
subparsers, so more ``gill annotate <command>`` subcommands can be added to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from annotations import exchange
from annotations.aggregate import aggregate_file, confident_labels, count_labels, human_baseline
from annotations.agreement import fleiss_kappa, krippendorff_alpha_nominal
from annotations.label_studio import (
    VOTE_MODES,
    cmd_label_studio_pull,
    cmd_label_studio_setup,
    export_label_studio,
    import_label_studio,
)
from annotations.store import SIMULATED_PANEL, JudgingStore, store_path
from annotations.votes import VOTE_VALUES, default_votes_path, read_votes
from flows.command.annotate_app import add_app_parsers
from flows.options import add_options, options_from
from flows.stages import candidates as candidates_stage
from flows.stages import votes as votes_stage
from flows.stages.candidates import CandidateOptions
from flows.stages.votes import PanelConfig
from flows.workdir import Workdir
from gill.errors import InputError


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _votes(args: argparse.Namespace) -> Path:
    """``--votes``, or the shipped Alignment votes when it is not given."""
    return args.votes if args.votes is not None else default_votes_path("alignment")


# -- handlers ---------------------------------------------------------------------------------------------------------


def cmd_annotate_aggregate(args: argparse.Namespace) -> int:
    """Write the confident labels (official rule) of a votes TSV; print the label counts."""

    counts = aggregate_file(_votes(args), args.out)
    _out(f"confident labels written to {args.out}")
    _out(f"  gen {counts.gen}  ret {counts.ret}  same {counts.same}  (usable {counts.usable} of {counts.total})")
    return 0


def human_baseline_report(votes: Path) -> dict:
    """Everything ``gill annotate human-baseline`` prints, as a JSON-ready dict."""

    rows = read_votes(votes)
    table = [r.votes for r in rows]
    baseline = human_baseline(rows)
    fleiss = fleiss_kappa(table, categories=VOTE_VALUES, mode="complete")
    fleiss_all = fleiss_kappa(table, categories=VOTE_VALUES, mode="generalised")
    alpha = krippendorff_alpha_nominal(table, categories=VOTE_VALUES)
    kappa = {"kappa": fleiss.kappa, "items": fleiss.n_items, "dropped": fleiss.n_dropped, "raters": fleiss.raters}
    kappa["generalised_all_items"] = fleiss_all.kappa
    return {
        "votes": str(votes),
        "labels": count_labels(confident_labels(rows)).as_dict(),
        "human_macro_f1": baseline.as_dict(),
        "fleiss_kappa": kappa,
        "krippendorff_alpha_nominal": {"alpha": alpha.alpha, "items": alpha.n_items, "pairable": alpha.n_pairable},
    }


def cmd_annotate_human_baseline(args: argparse.Namespace) -> int:
    """Print the human macro-F1 (official and leave-one-out) and the agreement of a votes TSV."""
    report = human_baseline_report(_votes(args))
    if args.json:
        _out(json.dumps(report, indent=2))
        return 0
    f1, labels = report["human_macro_f1"], report["labels"]
    _out(f"votes: {report['votes']}")
    _out(
        f"confident labels: gen {labels['gen']}  ret {labels['ret']}  same {labels['same']}  "
        f"(usable {labels['usable']} of {labels['total']})"
    )
    _out(f"human macro-F1, official (optimistic: each judge helped form the label): {f1['official']!r}")
    for s in f1["official_judges"]:
        _out(f"  judge {s['judge']}: {s['f1']:.4f} on {s['n']} prompts")
    _out(f"human macro-F1, leave-one-out (label from the other judges, official rule): {f1['leave_one_out']!r}")
    for s in f1["leave_one_out_judges"]:
        _out(f"  judge {s['judge']}: {s['f1']:.4f} on {s['n']} prompts")
    k, a = report["fleiss_kappa"], report["krippendorff_alpha_nominal"]
    _out(
        f"Fleiss' kappa (ret/gen/same): {k['kappa']:.4f} on the {k['items']} items with all {k['raters']} votes "
        f"({k['dropped']} dropped); generalised to all items: {k['generalised_all_items']:.4f}"
    )
    _out(f"Krippendorff's alpha (nominal): {a['alpha']:.4f} on {a['items']} items ({a['pairable']} pairable votes)")
    return 0


# -- parsers ----------------------------------------------------------------------------------------------------------


def _add_votes_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--votes",
        type=Path,
        default=None,
        help="votes TSV (Prompt, Category, Challenge, Note, Decisions); default: the shipped "
        "PartiPromptsAllDecisions_Alignment.tsv",
    )


def add_annotate_parsers(groups: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register ``gill annotate`` with ``aggregate`` and ``human-baseline``; return its subparsers for more."""
    annotate = groups.add_parser("annotate", help="human retrieve-vs-generate votes: labels, baseline, agreement")
    commands = annotate.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    p = commands.add_parser("aggregate", help="confident labels of a votes TSV (official rule), official layout")
    _add_votes_arg(p)
    p.add_argument("--out", type=Path, required=True, help="TSV to write (PartiPromptsDecisionsConfident layout)")
    p.set_defaults(func=cmd_annotate_aggregate)

    p = commands.add_parser("human-baseline", help="human macro-F1 (official and leave-one-out) and agreement")
    _add_votes_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_annotate_human_baseline)

    p = commands.add_parser("build", help="candidates: an SD-baseline image and the top bank image per prompt")
    p.add_argument("--workdir", type=Path, required=True, help="work folder with a checkpoint and its bank")
    p.add_argument("--checkpoint", type=Path, help="checkpoint (default: the newest run's best/ or final/)")
    add_options(p, CandidateOptions)
    p.set_defaults(func=cmd_annotate_build)

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

    p = commands.add_parser("simulate", help="let the SIMULATED answer-key panel judge the world items (own panel)")
    p.add_argument("--workdir", type=Path, required=True)
    add_options(p, PanelConfig)
    p.set_defaults(func=cmd_annotate_simulate)

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


def cmd_annotate_simulate(args: argparse.Namespace) -> int:
    """Run the simulated panel on the store's world items and print its agreement, labelled as simulated."""

    summary = votes_stage.run(Workdir.at(args.workdir), options_from(PanelConfig, args))
    store = JudgingStore(args.workdir)
    _out(
        f"SIMULATED panel (answer-key judges, not people): {summary.votes} new vote(s) on {summary.items} world "
        f"item(s) by {', '.join(summary.judges)}; {summary.skipped} item(s) without a scene are left to people"
    )
    for agreement in store.agreement(SIMULATED_PANEL):
        _out(f"  {agreement.describe()}")
    return 0


def cmd_annotate_build(args: argparse.Namespace) -> int:
    """Build the decision candidates into <workdir>/annotations/candidates and DuckDB decision_candidates."""

    summary = candidates_stage.run(
        Workdir.at(args.workdir), args.checkpoint, options_from(CandidateOptions, args), progress=True
    )
    store = JudgingStore(args.workdir)
    _out(
        f"decision candidates: {summary.total} prompts ({summary.built} built, {summary.skipped} already done); "
        f"images in {summary.images_dir}, rows in {summary.database} table decision_candidates"
    )
    _out(
        f"judging store {store.path}: {store.judgeable_items()} item(s) with images, open to judges "
        f"(gill annotate add-judge NAME --workdir {args.workdir}, then gill annotate serve)"
    )
    return 0
