"""The retrieve-vs-generate judging app, exports/imports, agreement and aggregation. Grows with the annotation issue."""
