"""Data stages of the model library: CC3M download and sharding, precomputed frozen targets, training reader.

Pure library code (no orchestration): the ``gill data`` commands and the Prefect flows call these functions.
"""
