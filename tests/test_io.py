"""Atomic writes: a crash never leaves a half-written file or folder under the final name."""

from __future__ import annotations

import pytest

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
