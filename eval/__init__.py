"""Metrics (pure functions), benchmark runners, the DuckDB schema and reports. Grows with the benchmark issue."""
