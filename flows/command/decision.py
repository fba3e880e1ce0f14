"""``gill decision fit``: train and evaluate the retrieve-or-generate classifier of a checkpoint.

Registered on the top-level parser by :func:`add_decision_parsers`; the handler is a thin call into
:func:`flows.stages.decision.fit_decision` (figures to ``<workdir>/gill.duckdb``, table ``decision_eval``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.command import add_group
from flows.options import add_options, options_from
from flows.stages import decision as decision_stage
from flows.workdir import Workdir


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_decision_fit(args: argparse.Namespace) -> int:
    """Fit the decision head on the votes; print the figures beside the human baselines."""
    workdir = Workdir.at(args.workdir)
    checkpoint = workdir.checkpoint(args.checkpoint)
    votes = args.votes
    if args.from_store:
        votes = decision_stage.store_votes(workdir, panel=args.panel)
        label = " (SIMULATED answer-key judges, not people)" if args.panel == "simulated" else ""
        _out(f"votes of panel {args.panel!r} from the judging store{label}: {votes}")
    result = decision_stage.fit(
        workdir,
        checkpoint,
        votes,
        options_from(decision_stage.FitOptions, args),
        panel=args.panel if args.from_store else "human",
        out_checkpoint=args.out,
    )
    if args.json:
        _out(json.dumps(result.as_dict(), indent=2))
        return 0
    _out(result.render())
    _out(
        f"decision head saved in {args.out or checkpoint}; figures: gill db query --workdir {args.workdir} "
        '"SELECT * FROM decision_eval"'
    )
    return 0


def add_decision_parsers(groups: argparse._SubParsersAction) -> None:
    """Register ``decision fit`` on the top-level ``gill`` parser."""
    decision = add_group(groups, "decision")
    p = decision.add_parser("fit", help="fit it on the PartiPrompts votes (official 600/rest split + 5-fold CV)")
    p.add_argument("--workdir", type=Path, required=True, help="work folder (gill.duckdb, the retrieval bank)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the newest run's best/ or final/)")
    p.add_argument("--votes", type=Path, help="a PartiPromptsAllDecisions_*.tsv (default: the shipped Alignment votes)")
    p.add_argument(
        "--from-store",
        action="store_true",
        help="use the judging store's votes (W/annotations/judging.sqlite) instead of a TSV",
    )
    p.add_argument(
        "--panel",
        default="human",
        help="with --from-store: whose votes, 'human' (people, default) or 'simulated' (the answer-key "
        "judges of the shapes world)",
    )
    p.add_argument("--out", type=Path, help="write a copy of the checkpoint with the head here (default: in place)")
    add_options(p, decision_stage.FitOptions)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_decision_fit)
