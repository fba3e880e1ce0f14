"""Prefect flows: one per file, thin tasks over gill/eval/annotations. The only package that imports prefect."""
