"""Flow ``build-decision-candidates``: per prompt, an SD-baseline image and the top bank image (paper section 3.3).

The full flow's two tasks: refresh the checkpoint's retrieval bank (skipped when up to date), then build the candidates,
which resume where an earlier run stopped. The rows land in DuckDB ``decision_candidates`` for the judging app.
"""

from __future__ import annotations

import dataclasses

from prefect import flow

from flows.options import options_from
from flows.params import CandidateParams
from flows.stages.candidates import CandidateOptions
from flows.tasks import adapters_id, candidates_task, index_task
from flows.workdir import Workdir


@flow(name="build-decision-candidates", log_prints=True)
def build_decision_candidates_flow(params: CandidateParams) -> dict:
    """Refresh the bank, then build the retrieve-vs-generate candidates for the judges."""
    checkpoint = Workdir.at(params.workdir).checkpoint(params.checkpoint)
    if params.build_index:
        index_task(params.workdir, checkpoint, adapters_id(checkpoint), [])
    options = dataclasses.asdict(options_from(CandidateOptions, params))
    summary = candidates_task(params.workdir, checkpoint, adapters_id(checkpoint), options)
    print(f"decision candidates: {summary}")
    return summary
