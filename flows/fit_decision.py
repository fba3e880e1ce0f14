"""Flow ``fit-decision``: fit and evaluate the retrieve-or-generate classifier (paper section 3.3).

One thin task around the decision stage's :func:`flows.stages.decision.fit`: features at ``[IMG0]``, the
official 600/rest protocol and a stratified k-fold CV, figures into DuckDB ``decision_eval`` beside the human
baselines, and the head saved into the checkpoint (so ``auto`` mode uses it).
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.options import options_from
from flows.params import DecisionParams
from flows.stages import decision as decision_stage
from flows.workdir import Workdir


@task(task_run_name="fit decision classifier")
def fit_task(params: DecisionParams) -> dict:
    """Fit on the votes (a TSV, the shipped votes, or the judging store); returns the figures."""
    workdir = Workdir.at(params.workdir)
    votes = decision_stage.store_votes(workdir, panel=params.panel) if params.from_store else params.votes
    checkpoint = workdir.checkpoint(params.checkpoint)
    options = options_from(decision_stage.FitOptions, params)
    result = decision_stage.fit(
        workdir, checkpoint, votes, options, panel=params.panel if params.from_store else "human"
    )
    return {**result.as_dict(), "checkpoint": str(checkpoint)}


@flow(name="fit-decision", log_prints=True)
def fit_decision_flow(params: DecisionParams) -> dict:
    """Fit the decision classifier and publish its figures."""
    figures = fit_task(params)
    create_markdown_artifact(
        key="decision-fit",
        markdown=(
            f"checkpoint `{figures['checkpoint']}`: official test macro-F1 {figures['official_test_f1']:.4f}, "
            f"{figures['cv_folds']}-fold CV {figures['cv_mean_f1']:.4f} +- {figures['cv_std_f1']:.4f}; human baseline "
            f"{figures['human_official_f1']:.4f} (leave-one-out {figures['human_loo_f1']:.4f})"
        ),
    )
    print(f"decision classifier: {figures}")
    return figures
