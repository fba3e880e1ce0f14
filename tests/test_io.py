"""Atomic writes: a crash never leaves a half-written file or folder under the final name."""

from __future__ import annotations

import pytest
from shard_helpers import killed_python

from gill.utils.io import atomic_directory, atomic_write_json, atomic_write_text, sha256_tree


def test_atomic_write_replaces_content_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_atomic_write_json_is_stable_for_hashing(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "x.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_failed_directory_build_keeps_the_previous_version(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(target) as tmp:
        (tmp / "v").write_text("1")
    before = sha256_tree(target)
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError("crash")
    assert sha256_tree(target) == before and (target / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_atomic_directory_gets_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "shared") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "manifest.json", {"a": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == 0o644


KILLED_REPLACE = """
import os, signal, sys
from pathlib import Path
from gill.utils.io import atomic_directory

target = Path(sys.argv[1])
real_replace = os.replace


def dying_replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if Path(src) == target:  # the previous version was just moved aside: die before the new one is moved in
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = dying_replace
with atomic_directory(target) as tmp:
    (tmp / "a").write_text("2")
    (tmp / "b").write_text("2")
os.kill(os.getpid(), signal.SIGKILL)  # or right after the replacement
"""


def test_a_kill_while_replacing_a_folder_leaves_the_old_or_the_new_version_never_none(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    killed_python(KILLED_REPLACE, target)
    assert target.is_dir()
    contents = {p.name: p.read_text() for p in target.iterdir()}
    assert contents in ({"a": "1", "b": "1"}, {"a": "2", "b": "2"})


def test_stale_temporary_folders_are_removed_but_locked_ones_files_and_others_are_kept(tmp_path):
    import fcntl
    import os

    from gill.utils.io import remove_stale_temp_dirs

    stale, live = tmp_path / ".ckpt.k1ll3d_x.tmp", tmp_path / ".ckpt.w0rk1ng_.tmp"
    keep = [tmp_path / ".ckpt.notours.tmp", tmp_path / "ckpt.abcdefgh.tmp", tmp_path / ".other"]
    for folder in (stale, live, *keep):
        folder.mkdir()
        (folder / "f").write_text("x")
    (tmp_path / ".ckpt.abcdefgh.tmp").write_text("a file")
    lock = os.open(live, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        assert remove_stale_temp_dirs(tmp_path, target="other") == []
        assert remove_stale_temp_dirs(tmp_path) == [stale]
    finally:
        os.close(lock)
    assert live.is_dir() and all(p.is_dir() for p in keep) and (tmp_path / ".ckpt.abcdefgh.tmp").is_file()
