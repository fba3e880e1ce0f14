"""Stage ``decision``: fit and evaluate GILL's retrieve-or-generate classifier (paper section 3.3) on judged votes;
store it and its figures.

:func:`fit_decision` reads the judges' votes (default: the shipped Alignment file), applies the official
confident-label rule (:func:`annotations.aggregate.confident_labels`), drops ``same``, computes the ``[IMG0]``
features with the checkpoint (:func:`gill.decision.decision_features`), then runs the official 600/rest protocol
and a stratified 5-fold CV (:func:`gill.decision.fit_and_evaluate`). The figures and the human baselines go to the
``decision_eval`` table of ``<workdir>/gill.duckdb``; the head (official train part, final step) is saved into the
checkpoint, or into a copy. From the shell::

    gill decision fit --workdir W [--checkpoint C] [--with-retrieval-score] [--out DIR]
    duckdb W/gill.duckdb "SELECT protocol, metric, value FROM decision_eval ORDER BY created DESC"
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from annotations.aggregate import confident_labels, human_baseline
from annotations.exchange import export_official_tsv
from annotations.store import JudgingStore, store_path
from annotations.votes import default_votes_path, read_votes
from eval.metrics import bootstrap_ci
from flows.stages.index import existing_bank
from flows.store import DECISION_CONFUSION_COLUMNS, connect, db_path
from flows.workdir import Workdir
from gill import decision as D
from gill.checkpoint import ADAPTERS_FILE, load_adapters, record_checksums, save_pretrained
from gill.decision import GEN, RET, DecisionFitResult, decision_features, fit_and_evaluate
from gill.errors import InputError
from gill.pipeline import GILLPipeline
from gill.retrieval import checkpoint_id
from gill.utils.io import atomic_directory
from gill.utils.paths import to_stored

logger = logging.getLogger(__name__)

TABLE = "decision_eval"
"""One row per figure: protocol ``official-600`` (metrics ``macro_f1``, ``best_on_test_f1``), ``cv5``
(``macro_f1``, ``macro_f1_std``, ``macro_f1_fold<k>``) and ``human`` (``macro_f1_official``,
``macro_f1_leave_one_out``); ``n`` is the number of examples the figure is computed on. The ``macro_f1`` rows also
hold their confusion counts (``true_<label>_pred_<label>``), and the official split's its 95% bootstrap interval
(``ci_low``, ``ci_high``; :func:`macro_f1_interval`). ``checkpoint`` and ``votes`` are stored relative to the
workdir when inside it (:func:`gill.utils.paths.resolve_stored` reads them)."""
CONFUSION_COLUMNS = DECISION_CONFUSION_COLUMNS
"""``decision_eval`` columns of a confusion matrix, in ``[true][predicted]`` row order (gen = 0, ret = 1)."""


class InsufficientLabelsError(InputError):
    """The votes give too few confident ``gen`` or ``ret`` labels to fit and cross-validate the classifier."""


def record_decision(workdir: str | os.PathLike[str], rows: list[dict[str, Any]]) -> int:
    """Insert ``rows`` into ``decision_eval`` (created if missing) in one transaction; returns the count."""

    columns = (
        "run_id",
        "created",
        "checkpoint",
        "checkpoint_id",
        "votes",
        "with_retrieval_score",
        "recipe",
        "protocol",
        "metric",
        "value",
        "n",
        "ci_low",
        "ci_high",
        *CONFUSION_COLUMNS,
    )
    with connect(db_path(workdir)) as con:  # creates the table (flows.store.TABLES)
        con.execute("BEGIN TRANSACTION")
        sql = f"INSERT OR REPLACE INTO {TABLE} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        con.executemany(sql, [[row.get(c) for c in columns] for row in rows])
        con.execute("COMMIT")
    return len(rows)


def _rows(result: DecisionFitResult, common: dict[str, Any]) -> list[dict[str, Any]]:
    official = "official-600" if result.n_train == 600 else f"official-{result.n_train}"
    cv = f"cv{result.cv_folds}"
    n_all = result.n_gen + result.n_ret
    figures = [
        (official, "macro_f1", result.official_test_f1, result.n_test),
        (official, "best_on_test_f1", result.official_best_on_test_f1, result.n_test),
        (cv, "macro_f1", result.cv_mean_f1, n_all),
        (cv, "macro_f1_std", result.cv_std_f1, n_all),
        *((cv, f"macro_f1_fold{k}", f1, None) for k, f1 in enumerate(result.cv_per_fold)),
        (_baseline_protocol(result.panel), "macro_f1_official", result.human_official_f1, n_all),
        (_baseline_protocol(result.panel), "macro_f1_leave_one_out", result.human_loo_f1, None),
    ]
    rows = [{**common, "protocol": p, "metric": m, "value": v, "n": n} for p, m, v, n in figures if v is not None]
    for row in rows:
        if row["metric"] != "macro_f1":
            continue
        confusion = result.official_confusion if row["protocol"] == official else result.cv_confusion
        if confusion is not None:
            row.update(zip(CONFUSION_COLUMNS, (c for line in confusion for c in line), strict=True))
        if row["protocol"] == official and confusion is not None:
            interval = macro_f1_interval(confusion)
            if interval is not None:
                row.update(ci_low=interval.low, ci_high=interval.high)
    return rows


def macro_f1_interval(confusion: Sequence[Sequence[int]], *, n_boot: int = 1000, seed: int = 0) -> Any:
    """95% percentile-bootstrap interval of the macro-F1 of the examples a ``[true][predicted]`` confusion matrix
    counts (:func:`eval.metrics.bootstrap_ci` resampling the examples, each scored by :func:`gill.decision.macro_f1`);
    None without examples. The counts are all a resample of examples needs: an example is its (true, predicted)."""
    k = len(confusion)
    codes = np.repeat(np.arange(k * k), [int(c) for line in confusion for c in line])
    if codes.size == 0:
        return None

    def statistic(samples: np.ndarray, axis: int) -> np.ndarray:
        return np.apply_along_axis(lambda row: D.macro_f1(row // k, row % k, num_classes=k), axis, samples)

    return bootstrap_ci(codes, statistic=statistic, n_boot=n_boot, seed=seed)


def _baseline_protocol(panel: str) -> str:
    """``human`` for people's votes, ``<panel>-panel`` (e.g. ``simulated-panel``) for any other panel."""
    return "human" if panel == "human" else f"{panel}-panel"


def official_train_size(n: int) -> int:
    """The training part of the official split for ``n`` usable examples: the notebook's 600 when there are
    comfortably more (over 700), else the first 60% (smaller decision sets, e.g. the shapes world's)."""
    return D.OFFICIAL_TRAIN if n > D.OFFICIAL_TRAIN + 100 else max(1, round(0.6 * n))


def save_head_into_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    head: torch.nn.Module,
    out_dir: str | os.PathLike[str] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint_dir`` with ``head`` as its decision head to ``out_dir`` (default: in place, atomically).

    The adapters file is copied byte for byte (so the checkpoint id, and with it the retrieval bank, stays
    valid); ``config.json`` is rewritten by :func:`gill.checkpoint.save_pretrained` with the original ``extra``
    plus ``extra["decision"] = info`` and the original provenance under ``extra["adapters_provenance"]``.
    """

    src = Path(checkpoint_dir)
    target = Path(out_dir) if out_dir is not None else src
    loaded = load_adapters(src)
    record = loaded.record
    dtype = getattr(torch, record["weights"].get("dtype", "float32"))
    extra = {**record.get("extra", {}), "decision": info or {}}
    extra.setdefault("adapters_provenance", record.get("provenance"))
    with atomic_directory(target) as tmp:
        staged = save_pretrained(
            tmp / "staged",
            loaded.adapters,
            loaded.config,
            loaded.img_tokens,
            extra,
            decision_head=head.cpu().eval(),
            dtype=dtype,
        )
        shutil.copyfile(src / record["weights"]["adapters"], staged / ADAPTERS_FILE)  # byte-identical adapters
        record_checksums(staged)
        for path in staged.iterdir():
            os.replace(path, tmp / path.name)
        staged.rmdir()
    return target


def fit_decision(
    workdir: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str],
    *,
    votes_path: str | os.PathLike[str] | None = None,
    with_retrieval_score: bool = False,
    out_checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    folds: int = 5,
    steps: int | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    panel: str = "human",
    recipe: str = "official",
    save_head: bool = True,
) -> DecisionFitResult:
    """Fit the decision classifier of ``checkpoint_dir`` on the votes and record everything (see module doc).

    Args:
        workdir: the work folder (its ``gill.duckdb`` gets the rows; its retrieval bank gives the score feature).
        checkpoint_dir: the checkpoint whose LM states are the features; it gets the head unless ``out_checkpoint``.
        votes_path: a ``PartiPromptsAllDecisions_*.tsv`` (default: the shipped Alignment votes).
        with_retrieval_score: add the max logit-scaled bank score as a feature (paper-era head; needs the bank).
        out_checkpoint: write the checkpoint with the head here instead of rewriting ``checkpoint_dir``.
        device: torch device for the feature extraction.
        folds: cross-validation folds.
        steps, seed: override the official 2000 steps / seed 1337.
        batch_size: prompts per LM forward.
        panel: whose votes these are (``human``, or ``simulated`` for the answer-key panel): names the baseline
            rows (protocol ``human`` or ``simulated-panel``) and every printed figure.
        recipe: ``official`` (the notebook's loop) or ``balanced`` (standardised features, class-weighted loss).
        save_head: write the head into the checkpoint (False: only record the figures).
    """

    votes = Path(votes_path) if votes_path is not None else default_votes_path()
    rows = read_votes(votes)
    labels = confident_labels(rows)
    usable = [(r.prompt, label) for r, label in zip(rows, labels, strict=True) if label in ("gen", "ret")]
    prompts = [p for p, _ in usable]
    y = torch.tensor([GEN if label == "gen" else RET for _, label in usable], dtype=torch.long)
    n_gen, n_ret = int((y == GEN).sum()), int((y == RET).sum())
    if min(n_gen, n_ret) < folds:
        raise InsufficientLabelsError(
            f"{votes} gives too few confident labels to fit the decision classifier",
            [
                f"gen {n_gen}, ret {n_ret}, same/unsure {len(rows) - len(usable)}; each of gen and ret needs at least "
                f"{folds} for {folds}-fold cross-validation"
            ],
            hint="judge more candidates (a larger candidate_limit), or pass a votes file with more prompts",
        )
    bank = existing_bank(Workdir.at(workdir), checkpoint_dir)
    pipe = GILLPipeline.from_pretrained(checkpoint_dir, bank=bank, load_sd=False, device=device)
    x = decision_features(pipe, prompts, with_retrieval_score=with_retrieval_score, batch_size=batch_size)
    steps = D.OFFICIAL_STEPS if steps is None else steps
    seed = D.OFFICIAL_SEED if seed is None else seed
    result, head = fit_and_evaluate(
        x,
        y,
        seed=seed,
        steps=steps,
        with_retrieval_score=with_retrieval_score,
        folds=folds,
        n_train=official_train_size(len(y)),
        recipe=recipe,
    )
    human = human_baseline(rows)
    result = dataclasses.replace(
        result,
        human_official_f1=human.official,
        human_loo_f1=human.leave_one_out,
        n_same=len(rows) - len(usable),
        panel=panel,
    )
    created = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    run_id = f"decision-{created:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    ckpt_id = checkpoint_id(checkpoint_dir)
    common = {
        "run_id": run_id,
        "created": created.replace(tzinfo=None),
        "checkpoint": to_stored(checkpoint_dir, workdir),
        "checkpoint_id": ckpt_id,
        "votes": to_stored(votes, workdir),
        "with_retrieval_score": with_retrieval_score,
        "recipe": recipe,
    }
    record_decision(workdir, _rows(result, common))
    info = {
        "run_id": run_id,
        "votes": str(votes),
        "panel": panel,
        "trained_on": "official split, train part, final step",
        "recipe": recipe,
        "retrieval_score_feature": D.RETRIEVAL_SCORE_SCALE if with_retrieval_score else None,
        "figures": result.as_dict(),
    }
    if save_head:
        save_head_into_checkpoint(checkpoint_dir, head, out_checkpoint, info)
    logger.info(
        "decision run %s: official test F1 %.4f, CV %.4f +- %.4f",
        run_id,
        result.official_test_f1,
        result.cv_mean_f1,
        result.cv_std_f1,
    )
    return result


HEADS = ("official", "bank-aware")
"""What the pipeline's decision stage may save: the notebook's head on h[IMG0], or h[IMG0] + the top retrieval score
with the balanced recipe (docs/judging.md)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecisionStageResult:
    """The fits of the pipeline's decision stage."""

    official: DecisionFitResult
    """The notebook's recipe on h[IMG0]: always fitted and recorded."""
    bank_aware: DecisionFitResult | None
    """h[IMG0] + top retrieval score, balanced recipe; fitted when it is the head to save."""
    saved: str
    """Which head the checkpoint keeps (:data:`HEADS`)."""


def fit_decision_stage(
    workdir: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str],
    *,
    votes_path: str | os.PathLike[str],
    panel: str = "human",
    head: str = "official",
    steps: int | None = None,
    device: str = "cpu",
) -> DecisionStageResult:
    """The decision stage of the pipeline: fit the official head and record it; with ``head="bank-aware"`` also fit
    the bank-aware head, which is then the one written into the checkpoint (auto mode uses it).

    Raises :class:`InsufficientLabelsError` (nothing recorded, nothing saved) when the votes give too few labels.
    """
    if head not in HEADS:
        raise InputError(f"unknown decision head {head!r}", [f"head: {head!r}"], hint=f"use one of {', '.join(HEADS)}")
    aware = head == "bank-aware"
    common = {"votes_path": votes_path, "panel": panel, "steps": steps, "device": device}
    official = fit_decision(workdir, checkpoint_dir, save_head=not aware, **common)
    bank_aware = None
    if aware:
        bank_aware = fit_decision(workdir, checkpoint_dir, recipe="balanced", with_retrieval_score=True, **common)
    return DecisionStageResult(official=official, bank_aware=bank_aware, saved=head)


def store_votes_tsv(workdir: str | os.PathLike[str], panel: str = "human") -> Path:
    """Write the judging store's alignment votes of ``panel`` in the official layout; return the path.

    The file lands in ``<workdir>/annotations/exports/Decisions_Alignment_<panel>.tsv``; fit on it to use the
    judgements of people (``human``, the default) or of the simulated panel (``simulated``).
    """

    if not store_path(workdir).is_file():
        raise InputError(
            f"no judging store under {workdir}",
            [],
            hint="judge with `gill annotate serve`, or `gill annotate import` votes first",
        )
    store = JudgingStore(workdir)
    if not store.votes_table(panel=panel):
        raise InputError(
            f"the judging store under {workdir} has no votes of panel {panel!r}",
            [f"panels: {', '.join(f'{p} ({store.count_votes(p)} votes)' for p in store.panels())}"],
            hint="judge first (gill annotate serve), or import votes (gill annotate import)",
        )
    alignment, _ = export_official_tsv(store, Path(workdir) / "annotations" / "exports", panel=panel)
    return alignment


# -- the stage's runner -------------------------------------------------------------------------------------------


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
        flows.stages.decision.InsufficientLabelsError: the votes give too few confident labels (nothing is saved).
    """
    return fit_decision_stage(
        workdir.root, checkpoint, votes_path=votes, panel=panel, head=head, steps=steps, device=device
    )


@dataclass(frozen=True, kw_only=True)
class FitOptions:
    """How one decision head is fitted on given votes (``gill decision fit``, the ``fit-decision`` flow)."""

    with_retrieval_score: bool = False
    """Paper-era head: also feed the max logit-scaled bank score (needs a retrieval bank)."""
    recipe: Literal["official", "balanced"] = "official"
    """official: the notebook's loop; balanced: the same loop on standardised features with a class-weighted loss."""
    folds: int = 5
    """Cross-validation folds."""
    steps: int | None = None
    """Training steps (default: the official 2000)."""
    seed: int | None = None
    """Seed (default: the official 1337)."""
    device: str = "cpu"
    """Torch device for the features (cpu, cuda, ...)."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.folds, int) or self.folds < 2:
            problems.append(f"folds={self.folds!r} (must be an int >= 2)")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            problems.append(f"steps={self.steps!r} (must be an int >= 1)")
        if self.recipe not in ("official", "balanced"):
            problems.append(f"recipe={self.recipe!r} (official or balanced)")
        if problems:
            raise InputError("invalid decision fit options", problems)


def fit(
    workdir: Workdir,
    checkpoint: Path,
    votes: Path | None,
    options: FitOptions | None = None,
    *,
    panel: str = "human",
    out_checkpoint: Path | None = None,
) -> DecisionFitResult:
    """One head on the given votes (default: the shipped votes) of ``panel``, recorded in the store and saved into
    the checkpoint (or a copy at ``out_checkpoint``)."""
    options = options or FitOptions()
    return fit_decision(
        workdir.root,
        checkpoint,
        votes_path=votes,
        out_checkpoint=out_checkpoint,
        panel=panel,
        **dataclasses.asdict(options),
    )


def store_votes(workdir: Workdir, panel: str = "human") -> Path:
    """The judging store's votes of ``panel`` written in the official TSV layout (what :func:`fit` reads)."""
    return store_votes_tsv(workdir.root, panel=panel)
