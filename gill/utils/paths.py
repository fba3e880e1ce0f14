"""Stored paths: relative to a root folder (a work folder) when inside it, absolute otherwise.

A work folder can be moved or copied (to another disk, another machine) with its ``gill.duckdb`` and judging store,
so every path the tables hold that points inside the work folder is stored relative to it (posix form), and
resolved against the work folder when read. A path outside it (e.g. a user's VIST image folder, the shipped votes
file) stays absolute. :func:`resolve_stored` leaves absolute values alone, so databases written before paths were
stored relative keep working.
"""

from __future__ import annotations

import os
from pathlib import Path


def to_stored(path: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> str:
    """How ``path`` is stored under ``root``: relative to ``root`` (posix) when it lies inside it, else (or when
    ``root`` is None) the absolute path. A relative ``path`` is taken relative to the current directory."""
    absolute = Path(os.path.abspath(path))
    if root is None:
        return str(absolute)
    root = Path(os.path.abspath(root))
    if absolute.is_relative_to(root):
        return absolute.relative_to(root).as_posix()
    real, real_root = Path(os.path.realpath(absolute)), Path(os.path.realpath(root))
    if real.is_relative_to(real_root):  # inside through a symlinked work folder (or a symlink into it)
        return real.relative_to(real_root).as_posix()
    return str(absolute)


def resolve_stored(value: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> Path:
    """The file a stored path names: a relative value is joined to ``root``; an absolute one (a file outside the
    root, or any path of a database written before paths were stored relative) is returned as it is."""
    path = Path(value)
    return path if path.is_absolute() or root is None else Path(root) / path
