"""The fast tar index (headers read directly) gives what :mod:`tarfile` gives, and hands every other tar to it."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from gill.data import shards
from gill.data.shards import ShardSample, index_shard, read_samples, write_image_shard
from gill.errors import InputError


def listing(members: dict) -> dict:
    """key -> ext -> (name, size, data offset): what reading a sample uses."""
    return {k: {e: (i.name, i.size, i.offset_data) for e, i in exts.items()} for k, exts in members.items()}


def samples(n: int) -> list[ShardSample]:
    rng = random.Random(n)
    out = [
        ShardSample(key=f"00000{i:04d}", caption=f"caption {i}", jpeg=rng.randbytes(rng.randint(1, 3000)), meta={})
        for i in range(n)
    ]
    rng.shuffle(out)
    return out


def add(tar: tarfile.TarFile, name: str, payload: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type = (len(payload), kind) if kind == tarfile.REGTYPE else (0, kind)
    tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)


def test_a_shard_as_written_is_indexed_from_its_headers_like_tarfile_does(tmp_path):
    tar = tmp_path / "00000.tar"
    written = samples(40)
    write_image_shard(tar, written)
    fast = shards._plain_tar_members(tar)
    assert fast is not None  # the fast path reads it
    assert listing(fast) == listing(shards._tarfile_members(tar))
    index = index_shard(tar)
    assert {s.key: (s.caption, s.jpeg) for s in read_samples(index, index.keys)} == {
        s.key: (s.caption, s.jpeg) for s in written
    }


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_folders_prefixed_names_and_empty_files_in_every_format(tmp_path, tar_format):
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w", format=tar_format) as tar:
        add(tar, "part", b"", tarfile.DIRTYPE)
        add(tar, "part/000000001.jpg", b"\xff\xd8 a picture")
        add(tar, "part/000000001.txt", b"")
        add(tar, "a" * 90 + "/" + "b" * 60 + ".jpg", b"x" * 513)  # ustar splits it into prefix and name
    fast = shards._plain_tar_members(path)
    want = listing(shards._tarfile_members(path))
    assert want["part/000000001"]["txt"][1] == 0 and len(want) == 2
    assert fast is None or listing(fast) == want  # GNU writes a long-name header: tarfile reads that one
    assert listing(index_shard(path).members) == want


@pytest.mark.parametrize(
    "entry",
    [
        ("n" * 120 + ".jpg", b"long name", tarfile.REGTYPE),
        ("caf\u00e9.jpg", b"pax name", tarfile.REGTYPE),
        ("link.jpg", b"", tarfile.SYMTYPE),
    ],
    ids=["long name", "non-ASCII name (pax header)", "symlink"],
)
def test_anything_but_plain_short_names_is_left_to_tarfile(tmp_path, entry):
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "000000001.jpg", b"first")
        add(tar, *entry)
    assert shards._plain_tar_members(path) is None
    assert listing(index_shard(path).members) == listing(shards._tarfile_members(path))


def test_a_damaged_or_truncated_tar_gets_tarfiles_verdict(tmp_path):
    tar = tmp_path / "00000.tar"
    write_image_shard(tar, samples(6))
    data = tar.read_bytes()
    bad_checksum = tmp_path / "bad.tar"
    bad_checksum.write_bytes(data[:148] + b"0000000\0" + data[156:])
    assert shards._plain_tar_members(bad_checksum) is None
    with pytest.raises(InputError, match="cannot read image shard"):
        index_shard(bad_checksum)  # tarfile refuses a first header with a wrong checksum
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 * 3 + 100])  # ends inside a header
    assert shards._plain_tar_members(cut) is None
    with pytest.raises(InputError, match="unexpected end of data"):
        index_shard(cut)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(InputError):
        index_shard(empty)
