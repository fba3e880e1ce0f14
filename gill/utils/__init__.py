"""Small shared utilities for the gill library (IO, hashing, logging)."""
