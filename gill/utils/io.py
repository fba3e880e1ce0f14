"""Atomic file writes and content hashing.

Every file the project produces is written to a temporary sibling and renamed into place, so a crash
never leaves a half-written file under the final name (a reader either sees the old file or the new one).

A folder is built under a temporary name (``.<name>.<8 random chars>.tmp``, held with an exclusive ``flock``
while it is built) and moved into place in one step: an existing folder is swapped with it atomically
(``renameat2(RENAME_EXCHANGE)`` on Linux), so even a kill during the replacement leaves the old or the new
folder under the name. A killed process leaves its temporary folder behind; :func:`remove_stale_temp_dirs`
deletes such leftovers (only unlocked folders named like that, nothing else).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TEMP_DIR = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
"""Names of the temporary folders :func:`atomic_directory` and :func:`remove_tree` make (``.<target>.<8>.tmp``)."""
OLD_DIR = re.compile(r"^\.(?P<target>.+)\.old-\d+$")
"""Names of replaced folders on the fallback path of :func:`atomic_directory` (no atomic exchange available)."""
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def chmod_like_open(path: str | os.PathLike[str]) -> None:
    """Give a file written through a private temporary name (mkstemp: 0600) the mode a plain ``open`` would give."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename), with the permissions
    a plain ``open(path, "w")`` would give (mkstemp's 0600, widened by the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as pretty, key-sorted JSON to ``path`` atomically (stable bytes for hashing)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``path`` only if the block succeeds.

    An existing directory at ``path`` is replaced (swapped atomically where the system can, see the module
    docstring). On error the temporary directory is removed and ``path`` is left as it was; a killed process
    leaves the temporary directory, which :func:`remove_stale_temp_dirs` removes later.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, lock = _locked_temp_dir(path)
    try:
        yield tmp
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _locked_temp_dir(path: Path) -> tuple[Path, int]:
    """A new ``.<name>.<8>.tmp`` folder beside ``path`` with the usual permissions, and an fd holding its flock.

    The flock tells :func:`remove_stale_temp_dirs` that the folder is in use. A cleanup that found the folder
    between its creation and the lock may remove it: then the lock is taken on a deleted folder, and we retry.
    """
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the final folder gets the usual permissions
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleanup that locked it first deletes it
        if os.fstat(fd).st_nlink > 0:
            return tmp, fd
        os.close(fd)


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is exchanged atomically (then deleted) where possible."""
    if not path.exists():
        os.replace(tmp, path)
    elif exchange_paths(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # ``tmp`` now holds the previous version
    else:  # no atomic exchange here: a kill between the two renames leaves the old version at ``old``
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)


def exchange_paths(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, changing nothing, where the system or file system cannot (then rename in two steps).
    """
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete the folder ``path`` so that no half-deleted folder is ever seen under its name.

    It is first renamed to a temporary name (``.<name>.<8>.tmp``); a kill during the deletion leaves only a
    leftover for :func:`remove_stale_temp_dirs`.
    """
    path = Path(path)
    doomed = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def remove_stale_temp_dirs(parent: str | os.PathLike[str], target: str | None = None) -> list[Path]:
    """Delete the temporary folders that killed writers left in ``parent``; returns those removed.

    Only folders named as :func:`atomic_directory` names them (``.<target>.<8 chars>.tmp``, of ``target``
    when given) and not locked by a live writer are removed, plus replaced versions (``.<target>.old-<pid>``)
    whose target exists. Files and every other folder are left alone.
    """
    parent = Path(parent)
    removed = []
    for entry in sorted(parent.iterdir()) if parent.is_dir() else []:
        if not entry.is_dir() or entry.is_symlink():
            continue
        if (match := TEMP_DIR.match(entry.name)) and target in (None, match["target"]) and _remove_unlocked(entry):
            removed.append(entry)
        elif (match := OLD_DIR.match(entry.name)) and target in (None, match["target"]):
            if (parent / match["target"]).exists():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    for entry in removed:
        logger.info("removed %s, left by an interrupted write", entry)
    return removed


def _remove_unlocked(folder: Path) -> bool:
    """Remove ``folder`` unless a live writer holds its flock."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: str | os.PathLike[str]) -> str:
    """One sha256 over every file under ``root`` (relative path and content), in sorted order."""
    root = Path(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()
