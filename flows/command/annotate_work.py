"""``gill annotate build|simulate``: the ``gill annotate`` commands that need the model stack (the candidates and
votes stages). :mod:`flows.command.annotate` registers them as deferred stubs; the ``gill`` entry point imports this
module only when one of them runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from annotations.store import SIMULATED_PANEL, JudgingStore
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


# -- handlers ---------------------------------------------------------------------------------------------------------


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
    "build": _add_build,
    "simulate": _add_simulate,
}
"""The arguments and handler of each of :data:`flows.command.annotate.STACK_COMMANDS`."""


def add_annotate_parsers(groups: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register ``gill annotate`` with every command (the judging commands and those here); return its subparsers."""
    return annotate.add_annotate_parsers(groups, STACK_FILLERS)
