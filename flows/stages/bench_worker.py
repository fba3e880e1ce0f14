"""``python -m flows.stages.bench_worker INDEX COUNT CALL_JSON``: one ``--num-workers`` worker process of a benchmark.

It repeats the parent's benchmark call (:class:`flows.stages.bench_shards.WorkerCall`) on shard ``INDEX`` of
``COUNT``, writing its rows to shard files (:func:`flows.stages.bench_shards.run_workers` starts it; the parent
merges the rows and computes the results once every worker is done). Exit status: 0, or the ``gill`` command's for
the same error (2 bad input, 3 missing weights, 1 otherwise).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from eval.bench import BenchOptions
from eval.metric_models import MetricModelSpec
from flows.stages.bench import run_call
from flows.stages.bench_shards import Sharding, WorkerCall, save_worker_error
from gill.errors import GillError
from gill.offline import configure_environment

logger = logging.getLogger("flows.stages.bench_worker")


def main(argv: Sequence[str]) -> int:
    configure_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    index, count, text = int(argv[0]), int(argv[1]), argv[2]
    call = WorkerCall.from_json(text)
    options = BenchOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in call.options.items()})
    spec = MetricModelSpec(**call.metric_spec) if call.metric_spec is not None else None
    sharding = Sharding(index=index, count=count, local_index=index)
    try:
        summaries = run_call(call, options, spec, sharding)
    except GillError as err:
        logger.error("%s", err.render())
        save_worker_error(call.error_file(index), err)
        return err.exit_code
    for s in summaries:
        logger.info(
            "%s: %s: %d sample rows scored, %d skipped, %d already scored",
            sharding.describe(),
            s.benchmark,
            s.scored,
            s.skipped,
            s.resumed,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
