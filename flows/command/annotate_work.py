"""``gill annotate aggregate|human-baseline|build|simulate``: the ``gill annotate`` commands that need the model
stack (the macro-F1 of :mod:`gill.decision`, the candidates and votes stages). :mod:`flows.command.annotate`
registers them as deferred stubs; the ``gill`` entry point imports this module only when one of them runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from annotations.aggregate import aggregate_file, confident_labels, count_labels, human_baseline
from annotations.agreement import fleiss_kappa, krippendorff_alpha_nominal
from annotations.store import SIMULATED_PANEL, JudgingStore
from annotations.votes import VOTE_VALUES, default_votes_path, read_votes
from flows.command import annotate
from flows.options import add_options, options_from
from flows.stages import candidates as candidates_stage
from flows.stages import votes as votes_stage
from flows.stages.candidates import CandidateOptions
from flows.stages.votes import PanelConfig
from flows.workdir import Workdir


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


# -- parsers ----------------------------------------------------------------------------------------------------------


def _add_votes_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--votes",
        type=Path,
        default=None,
        help="votes TSV (Prompt, Category, Challenge, Note, Decisions); default: the shipped "
        "PartiPromptsAllDecisions_Alignment.tsv",
    )


def _add_aggregate(p: argparse.ArgumentParser) -> None:
    _add_votes_arg(p)
    p.add_argument("--out", type=Path, required=True, help="TSV to write (PartiPromptsDecisionsConfident layout)")
    p.set_defaults(func=cmd_annotate_aggregate)


def _add_human_baseline(p: argparse.ArgumentParser) -> None:
    _add_votes_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_annotate_human_baseline)


def _add_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, required=True, help="work folder with a checkpoint and its bank")
    p.add_argument("--checkpoint", type=Path, help="checkpoint (default: the newest run's best/ or final/)")
    add_options(p, CandidateOptions)
    p.set_defaults(func=cmd_annotate_build)


def _add_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, required=True)
    add_options(p, PanelConfig)
    p.set_defaults(func=cmd_annotate_simulate)


STACK_FILLERS: dict[str, annotate.Filler] = {
    "aggregate": _add_aggregate,
    "human-baseline": _add_human_baseline,
    "build": _add_build,
    "simulate": _add_simulate,
}
"""The arguments and handler of each of :data:`flows.command.annotate.STACK_COMMANDS`."""


def add_annotate_parsers(groups: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register ``gill annotate`` with every command (the judging commands and those here); return its subparsers."""
    return annotate.add_annotate_parsers(groups, STACK_FILLERS)
