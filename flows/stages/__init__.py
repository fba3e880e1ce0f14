"""One runner per stage: each module has a ``run(...)`` that calls the library, records to the project store
(:mod:`flows.store`) and returns a typed result. Every front end (the ``gill`` command, the Prefect flows, the demo)
calls these runners and nothing else, so each stage is wired once.

Stages, in pipeline order: world, download, precompute, train, index, candidates, votes, decision, bench, report.
"""

STAGES = ("world", "download", "precompute", "train", "index", "candidates", "votes", "decision", "bench", "report")
