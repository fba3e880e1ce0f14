"""Stage ``decision``: fit the retrieve-or-generate classifier on judged votes (paper section 3.3), record its
macro-F1 beside the judges' baseline in ``decision_eval`` and save the chosen head into the checkpoint."""

from __future__ import annotations

from pathlib import Path

from eval.decision import DecisionStageResult, fit_decision_stage
from flows.workdir import Workdir


def run(
    workdir: Workdir,
    checkpoint: Path,
    votes: Path,
    *,
    panel: str = "human",
    head: str = "official",
    steps: int | None = None,
    device: str = "cpu",
) -> DecisionStageResult:
    """The official head is always fitted and recorded; with ``head="bank-aware"`` the bank-aware head is fitted too
    and is the one saved (auto mode uses it).

    Raises:
        eval.decision.InsufficientLabelsError: the votes give too few confident labels (nothing is saved).
    """
    return fit_decision_stage(
        workdir.root, checkpoint, votes_path=votes, panel=panel, head=head, steps=steps, device=device
    )
