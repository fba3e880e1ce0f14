"""Flow ``build-decision-candidates``: per prompt, an SD-baseline image and the top bank image (paper section 3.3).

Two thin tasks: refresh the checkpoint's retrieval bank (skipped when up to date), then build the candidates,
which resume where an earlier run stopped. The rows land in DuckDB ``decision_candidates`` for the judging app.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.params import CandidateParams


@task(task_run_name="retrieval bank")
def bank_task(params: CandidateParams) -> str:
    """Build the retrieval bank of the checkpoint (``gill index build``); returns its folder."""
    from gill.pipeline import resolve_checkpoint
    from gill.retrieval import build_bank

    info = build_bank(params.workdir, resolve_checkpoint(params.workdir, params.checkpoint), progress=False)
    return str(info.path)


@task(task_run_name="decision candidates")
def candidates_task(params: CandidateParams) -> dict:
    """Generate and retrieve one image per prompt, then load them into the judging store (``gill annotate build``)."""
    from annotations.store import JudgingStore
    from flows.stages.candidates import build_candidates, import_candidates

    summary = build_candidates(
        params.workdir,
        checkpoint=params.checkpoint,
        prompts=params.prompts,
        limit=params.limit,
        sd_steps=params.sd_steps,
        seed=params.seed,
        device=params.device,
        progress=False,
    )
    store = JudgingStore(params.workdir)
    import_candidates(params.workdir, store)
    return {
        "total": summary.total,
        "built": summary.built,
        "skipped": summary.skipped,
        "database": str(summary.database),
        "images": str(summary.images_dir),
        "store": str(store.path),
        "judgeable_items": store.judgeable_items(),
    }


@flow(name="build-decision-candidates", log_prints=True)
def build_decision_candidates_flow(params: CandidateParams) -> dict:
    """Refresh the bank, then build the retrieve-vs-generate candidates for the judges."""
    if params.build_index:
        bank_task(params)
    summary = candidates_task(params)
    create_markdown_artifact(
        key="decision-candidates",
        markdown=(
            f"{summary['total']} prompts ({summary['built']} built, {summary['skipped']} already done); images in "
            f"`{summary['images']}`, rows in `{summary['database']}` table `decision_candidates`"
        ),
    )
    print(f"decision candidates: {summary}")
    return summary
