"""``gill annotate aggregate|human-baseline``: confident labels, the human macro-F1 and the agreement of a votes
TSV (paper section 3.3, the official rule). Light: numpy and the annotations package, no model stack, so a judge's
machine runs them in a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from annotations.aggregate import aggregate_file, confident_labels, count_labels, human_baseline
from annotations.agreement import fleiss_kappa, krippendorff_alpha_nominal
from annotations.votes import VOTE_VALUES, default_votes_path, read_votes


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


def add_aggregate(p: argparse.ArgumentParser) -> None:
    _add_votes_arg(p)
    p.add_argument("--out", type=Path, required=True, help="TSV to write (PartiPromptsDecisionsConfident layout)")
    p.set_defaults(func=cmd_annotate_aggregate)


def add_human_baseline(p: argparse.ArgumentParser) -> None:
    _add_votes_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_annotate_human_baseline)
