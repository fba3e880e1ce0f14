"""The official confident-label rule and the human baseline on GILL's PartiPrompts votes.

**Confident label** (official ``scripts/process_p2_annotations.py``): with ``gen`` and ``ret`` the vote counts of
a prompt, the label is the majority class when ``gen >= 4 or ret >= 4 or (gen == 3 and ret <= 1) or
(ret == 3 and gen <= 1)``, else ``same``. So of five votes 5-0, 4-1, 3-1-1 and 3-0-2 (three for one side, at most
one for the other, the rest ``same``) are kept, and 3-2 splits are dropped. This is looser than the paper's "at
least 4 of 5 annotators agree"; we follow the code, which is what produced the released
``PartiPromptsDecisionsConfident.tsv`` (gen 592, ret 319, same 721 on the Alignment votes: 911 usable prompts).

**Human baseline, official (optimistic)**: for each judge position ``j`` take every confident (non-``same``)
prompt where judge ``j`` voted ``gen`` or ``ret`` (their ``same`` votes and missing votes are skipped), score
that judge's votes against the confident labels with 2-class macro-F1 (over ``gen``/``ret``, torchmetrics-style),
and average over the judges: 0.8510681024099351 on the Alignment votes. Optimistic, because each judge's vote
helped form the label it is scored against.

**Human baseline, leave-one-out (leakage-free)**: judge ``j`` is scored against the label formed by the *other*
judges' votes, with the official rule applied unchanged to those remaining votes (:func:`confident_label` works
on any number of votes). With four remaining votes the rule means "at least 3 of the 4 for one side" (3-1, 3-0-1,
4-0); with three (the two prompts that have only four votes) it means a unanimous 3-0. Prompts whose
leave-one-out label is ``same``, or where judge ``j`` voted ``same`` or did not vote, are skipped.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from annotations.votes import VOTE_VALUES, VoteRow, read_votes, write_confident
from gill.scores import macro_f1 as indexed_macro_f1

DECISION_CLASSES = ("gen", "ret")
"""The classes of the decision classifier and of the macro-F1 (``same`` is not a decision)."""


def confident_label(votes: Sequence[str]) -> str:
    """The official confident label of one prompt's votes: ``gen``, ``ret``, or ``same`` when not confident.

    Works for any number of votes; for up to five it is exactly the official script's ``most_common`` choice.
    """
    counts = Counter(votes)
    gen, ret = counts["gen"], counts["ret"]
    if gen >= 4 or ret >= 4 or (gen == 3 and ret <= 1) or (ret == 3 and gen <= 1):
        return "gen" if gen > ret else "ret"
    return "same"


def confident_labels(rows: Sequence[VoteRow]) -> list[str]:
    """:func:`confident_label` of every row, in row order."""
    return [confident_label(r.votes) for r in rows]


@dataclass(frozen=True)
class LabelCounts:
    """How many prompts got each label; ``usable`` = gen + ret (the prompts a decision classifier trains on)."""

    gen: int
    ret: int
    same: int

    @property
    def usable(self) -> int:
        return self.gen + self.ret

    @property
    def total(self) -> int:
        return self.gen + self.ret + self.same

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "usable": self.usable, "total": self.total}


def count_labels(labels: Sequence[str]) -> LabelCounts:
    """The :class:`LabelCounts` of a list of labels."""
    counts = Counter(labels)
    unknown = set(counts) - set(VOTE_VALUES)
    if unknown:
        raise ValueError(f"unknown label(s) {sorted(unknown)}")
    return LabelCounts(gen=counts["gen"], ret=counts["ret"], same=counts["same"])


def aggregate_file(votes_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> LabelCounts:
    """Read a votes TSV, write its confident labels in the official ``PartiPromptsDecisionsConfident.tsv`` layout
    (same row order; last column ``Decision``), and return the label counts."""
    rows = read_votes(votes_path)
    labels = confident_labels(rows)
    write_confident(Path(out_path), rows, labels)
    return count_labels(labels)


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str] = DECISION_CLASSES) -> float:
    """Macro-averaged F1 over ``classes`` of string labels: :func:`gill.scores.macro_f1` (torchmetrics' multiclass
    F1 with ``average="macro"``) on each label's index in ``classes``.

    Per class ``F1 = 2 TP / (2 TP + FP + FN)``; classes absent from both ``y_true`` and ``y_pred``
    (``TP + FP + FN == 0``) are left out of the average; 0.0 when no class is left (or no samples). A label outside
    ``classes`` (e.g. ``same``) belongs to none of them: a miss for the class on the other side.
    """

    index = {c: i for i, c in enumerate(classes)}
    outside = -1  # no class has this index
    return indexed_macro_f1(
        [index.get(label, outside) for label in y_true],
        [index.get(label, outside) for label in y_pred],
        num_classes=len(classes),
    )


@dataclass(frozen=True)
class JudgeScore:
    """One judge position's macro-F1 against a reference label, over ``n`` prompts."""

    judge: int  # 0-based position in the Decisions column
    f1: float
    n: int


@dataclass(frozen=True)
class HumanBaseline:
    """The human macro-F1 on the retrieve-vs-generate decision, official and leave-one-out."""

    official: float  # mean over judges of the official (optimistic) per-judge F1
    official_judges: list[JudgeScore]
    leave_one_out: float  # mean over judges of F1 against the other judges' label
    leave_one_out_judges: list[JudgeScore]

    def as_dict(self) -> dict:
        return asdict(self)


def _judge_f1(rows: Sequence[VoteRow], judge: int, reference: Sequence[str]) -> JudgeScore:
    """Judge ``judge``'s votes against ``reference`` (one label per row), on rows where both are gen/ret."""
    truth, pred = [], []
    for row, label in zip(rows, reference, strict=True):
        if judge < len(row.votes) and row.votes[judge] in DECISION_CLASSES and label in DECISION_CLASSES:
            truth.append(label)
            pred.append(row.votes[judge])
    return JudgeScore(judge=judge, f1=macro_f1(truth, pred), n=len(truth))


def leave_one_out_labels(rows: Sequence[VoteRow], judge: int) -> list[str]:
    """The official rule applied to each row's votes without judge ``judge``'s vote."""
    return [confident_label(r.votes[:judge] + r.votes[judge + 1 :]) for r in rows]


def human_baseline(rows: Sequence[VoteRow]) -> HumanBaseline:
    """Human macro-F1 of each judge position against the confident label (official, optimistic) and against the
    other judges' confident label (leave-one-out); each averaged over the judge positions. See the module docstring.
    """
    n_judges = max((len(r.votes) for r in rows), default=0)
    if n_judges == 0:
        raise ValueError("no votes to score")
    labels = confident_labels(rows)
    official = [_judge_f1(rows, j, labels) for j in range(n_judges)]
    loo = [_judge_f1(rows, j, leave_one_out_labels(rows, j)) for j in range(n_judges)]
    return HumanBaseline(
        official=float(np.mean([s.f1 for s in official])),
        official_judges=official,
        leave_one_out=float(np.mean([s.f1 for s in loo])),
        leave_one_out_judges=loo,
    )
