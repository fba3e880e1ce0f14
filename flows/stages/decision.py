"""Stage ``decision``: fit the retrieve-or-generate classifier on judged votes (paper section 3.3), record its
macro-F1 beside the judges' baseline in ``decision_eval`` and save the chosen head into the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.decision import DecisionStageResult, fit_decision, fit_decision_stage, store_votes_tsv
from flows.workdir import Workdir
from gill.decision import DecisionFitResult


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


def fit(workdir: Workdir, checkpoint: Path, votes: Path | None, **options: Any) -> DecisionFitResult:
    """One head on the given votes (default: the shipped votes), recorded and saved; ``options`` are
    :func:`eval.decision.fit_decision`'s (recipe, with_retrieval_score, folds, steps, seed, out_checkpoint, panel,
    device)."""
    return fit_decision(workdir.root, checkpoint, votes_path=votes, **options)


def store_votes(workdir: Workdir, panel: str = "human") -> Path:
    """The judging store's votes of ``panel`` written in the official TSV layout (what :func:`fit` reads)."""
    return store_votes_tsv(workdir.root, panel=panel)
