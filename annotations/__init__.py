"""Judging: the retrieve-vs-generate judging store and web app, Label Studio and TSV/bundle exchange, aggregation
of votes and agreement between judges. Imports the model library only (never eval/ or flows/)."""
