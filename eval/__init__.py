"""Metrics and benchmark scoring: pure metric functions, metric models, the scene metric, benchmark items, image
producing and scoring. No database: the bench stage (flows.stages.bench) records what these compute."""
