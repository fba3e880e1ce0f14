"""Image shards as img2dataset writes them (webdataset tars), read with the standard library.

Layout of one split's image folder, as img2dataset's ``output_format="webdataset"`` writes it::

    00000.tar  00000.parquet  00000_stats.json  00001.tar ...

Each tar holds ``<key>.jpg``, ``<key>.txt`` (the caption) and ``<key>.json`` (metadata) per sample, in arbitrary
order. A shard is **complete only when its ``_stats.json`` exists** (img2dataset writes it last), so a tar
without one is a shard still being written or one whose download crashed, and is ignored here.

These are the inputs of the precompute stage (paper section 3: GILL trains only adapters over frozen CLIP
features and frozen SD text-encoder targets) and of the reader's alignment check. Reading uses :mod:`tarfile`
with random access by member, so a shard can be processed in key order without holding it in memory.
:func:`write_image_shard` writes the same format (tests, benchmarks, small hand-made datasets).
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gill.errors import InputError
from gill.utils.io import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

WORKER_CONTEXT = "forkserver"
"""How DataLoader worker processes start. Not ``fork``: forking a process that runs threads (a Prefect flow
run, an event loop, a Dask client) is unsafe, and after a Prefect server has run in the process fork-started
workers die with exit code 1. ``forkserver`` forks from a clean single-threaded server instead."""

STATS_SUFFIX = "_stats.json"
IMAGE_EXT = "jpg"
CAPTION_EXT = "txt"
META_EXT = "json"


@dataclass(frozen=True)
class SplitFolders:
    """Where one split's files live: its image shards and its precomputed feature shards.

    The library takes these explicit folders (any layout works); the application's work folder lays them out as
    ``data/cc3m/<split>/`` and ``features/cc3m/<split>/``.
    """

    name: str
    """The split's name (``train``, ``val``): recorded in manifests and bank tables, shown in messages."""
    images: Path
    """Folder of the image shards (``<shard>.tar`` + ``<shard>_stats.json``, as img2dataset writes them)."""
    features: Path
    """Folder of the feature shards (one sub-folder per image shard, as :mod:`gill.data.precompute` writes them)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", Path(self.images))
        object.__setattr__(self, "features", Path(self.features))


def stats_path(shard_tar: Path) -> Path:
    """``00000.tar`` -> ``00000_stats.json`` (written by img2dataset when the shard is done)."""
    return shard_tar.with_name(shard_tar.stem + STATS_SUFFIX)


STATS_INT_FIELDS = ("count", "successes", "failed_to_download", "failed_to_resize")


def read_stats(path: Path) -> dict[str, Any] | None:
    """A shard's ``_stats.json`` if it exists and holds the counts, else None.

    img2dataset writes it last but not atomically, so a crash can leave it cut off: such a shard is not done.
    """
    try:
        stats = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stats, dict) or not isinstance(stats.get("duration"), int | float):
        return None
    if not all(isinstance(stats.get(k), int) and not isinstance(stats.get(k), bool) for k in STATS_INT_FIELDS):
        return None
    return stats


def complete_image_shards(folder: Path) -> list[Path]:
    """Tars in ``folder`` with a valid ``_stats.json``, sorted by name; incomplete ones are logged and skipped."""
    folder = Path(folder)
    tars = sorted(p for p in folder.glob("*.tar") if p.is_file()) if folder.is_dir() else []
    complete = [t for t in tars if read_stats(stats_path(t)) is not None]
    for tar in sorted(set(tars) - set(complete)):
        logger.info("ignoring incomplete image shard %s (no valid %s)", tar, stats_path(tar).name)
    return complete


def split_member_name(name: str) -> tuple[str, str]:
    """Webdataset convention: ``dir/000000001.jpg`` -> (``dir/000000001``, ``jpg``): the key ends at the first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


@dataclass(kw_only=True)
class ShardIndex:
    """Where each sample's members lie inside one tar (no data read yet)."""

    tar: Path
    """The shard file."""
    members: dict[str, dict[str, tarfile.TarInfo]]
    """key -> extension -> tar member."""

    @property
    def keys(self) -> list[str]:
        """Sample keys in sorted order (the row order of every feature shard)."""
        return sorted(self.members)

    @property
    def image_keys(self) -> list[str]:
        """Sorted keys of the samples that have an image member."""
        return [k for k in self.keys if IMAGE_EXT in self.members[k]]

    def __len__(self) -> int:
        return len(self.members)


def index_shard(shard_tar: Path) -> ShardIndex:
    """Read a tar's member headers (not their data) and group them by sample key.

    Shards as img2dataset and :func:`write_image_shard` write them (plain files with short names) are indexed by
    reading the 512-byte headers directly, three to four times faster than :mod:`tarfile`'s iteration (20 ms
    instead of 75 for a 1,024-sample shard, whose tiny-preset forward takes under a second); any other tar (long
    names, pax headers, links, a damaged header) is read by :mod:`tarfile`, which decides what it means.
    """
    try:
        members = _plain_tar_members(shard_tar)
        if members is None:
            members = _tarfile_members(shard_tar)
    except (OSError, tarfile.TarError) as err:
        raise InputError(f"cannot read image shard {shard_tar}", [str(err)]) from err
    return ShardIndex(tar=Path(shard_tar), members=members)


def _tarfile_members(shard_tar: Path) -> dict[str, dict[str, tarfile.TarInfo]]:
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(shard_tar, "r:") as tar:
        for info in tar:
            if info.isfile():
                key, ext = split_member_name(info.name)
                members.setdefault(key, {})[ext] = info
    return members


_BLOCK = tarfile.BLOCKSIZE
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_SKIPPED_TYPES = (tarfile.DIRTYPE,)


def _plain_tar_members(shard_tar: Path) -> dict[str, dict[str, tarfile.TarInfo]] | None:
    """The members of a tar that holds only regular files and folders with ustar/GNU headers of short names, read
    straight from the headers; None for anything else (then :mod:`tarfile` reads it)."""
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    with open(shard_tar, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return None
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pos = 0
            while pos + _BLOCK <= size:
                header = data[pos : pos + _BLOCK]
                if header == tarfile.NUL * _BLOCK:
                    return members  # end of archive
                parsed = _plain_header(header)
                if parsed is None:
                    return None
                name, length, kind = parsed
                if kind in _PLAIN_TYPES:
                    info = tarfile.TarInfo(name)
                    info.size, info.type, info.offset, info.offset_data = length, tarfile.REGTYPE, pos, pos + _BLOCK
                    key, ext = split_member_name(name)
                    members.setdefault(key, {})[ext] = info
                pos += _BLOCK + -(-length // _BLOCK) * _BLOCK
            return members if pos == size else None  # a short last block: tarfile's call


def _plain_header(header: bytes) -> tuple[str, int, bytes] | None:
    """(name, size, type) of a ustar/GNU header of a regular file or folder with a checked checksum, else None."""
    kind = header[156:157]
    if kind not in _PLAIN_TYPES + _SKIPPED_TYPES or header[257:262] != b"ustar" or header[124] & 0x80:
        return None
    try:
        length = int(header[124:136].strip(b"\0 ") or b"0", 8)
        checksum = int(header[148:156].strip(b"\0 "), 8)
    except ValueError:
        return None
    if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        return None
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
    full = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
    return full, length, kind


def shard_keys(shard_tar: Path) -> list[str]:
    """Sorted keys of the samples that have an image in ``shard_tar`` (from member names only)."""
    return index_shard(shard_tar).image_keys


@dataclass(kw_only=True)
class ShardSample:
    """One image-caption pair as stored in a shard."""

    key: str
    """img2dataset key (shard id + index), unique within a split."""
    caption: str
    """The ``.txt`` member."""
    jpeg: bytes
    """The encoded image (``.jpg`` member)."""
    meta: dict[str, Any]
    """The ``.json`` member (uid, url, caption, key, ...), empty when absent."""


def read_samples(index: ShardIndex, keys: list[str]) -> list[ShardSample]:
    """Read the samples ``keys`` of an indexed shard, in that order (random access by member offset)."""
    with open(index.tar, "rb") as handle:
        return [_read_sample(handle, index, key) for key in keys]


def iter_shard_samples(index: ShardIndex, keys: list[str] | None = None) -> Iterator[ShardSample]:
    """Yield the samples of an indexed shard in key order (default: every key that has an image)."""
    wanted = keys if keys is not None else index.image_keys
    with open(index.tar, "rb") as handle:
        for key in wanted:
            yield _read_sample(handle, index, key)


def _read_member(handle: BinaryIO, info: tarfile.TarInfo) -> bytes:
    handle.seek(info.offset_data)
    return handle.read(info.size)


def _read_sample(handle: BinaryIO, index: ShardIndex, key: str) -> ShardSample:
    parts = index.members[key]
    missing = [ext for ext in (IMAGE_EXT, CAPTION_EXT) if ext not in parts]
    if missing:
        raise InputError(
            f"image shard {index.tar.name}: sample {key!r} is incomplete",
            [f"missing member {key}.{ext}" for ext in missing],
        )
    data = {ext: _read_member(handle, info) for ext, info in parts.items()}
    try:
        meta = json.loads(data[META_EXT]) if META_EXT in data else {}
        caption = data[CAPTION_EXT].decode("utf-8")
    except ValueError as err:
        raise InputError(f"image shard {index.tar.name}: sample {key!r} has unreadable text", [str(err)]) from err
    return ShardSample(key=key, caption=caption, jpeg=data[IMAGE_EXT], meta=meta)


def write_image_shard(shard_tar: Path, samples: list[ShardSample], *, complete: bool = True) -> Path:
    """Write ``samples`` as an img2dataset webdataset shard (tar in the given member order, then ``_stats.json``).

    Args:
        shard_tar: target ``<split dir>/<shard>.tar``.
        samples: what to store; their order is the member order.
        complete: also write ``_stats.json`` (img2dataset's "shard is done" marker).
    """
    start = time.perf_counter()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for sample in samples:
            meta = {"key": sample.key, "caption": sample.caption, "status": "success", **sample.meta}
            for ext, payload in (
                (IMAGE_EXT, sample.jpeg),
                (CAPTION_EXT, sample.caption.encode("utf-8")),
                (META_EXT, json.dumps(meta, sort_keys=True).encode("utf-8")),
            ):
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size, info.mtime = len(payload), 0
                tar.addfile(info, io.BytesIO(payload))
    atomic_write_bytes(shard_tar, buffer.getvalue())
    if complete:
        stats = {
            "count": len(samples),
            "successes": len(samples),
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "duration": round(time.perf_counter() - start, 4),
            "status_dict": {"success": len(samples)},
        }
        atomic_write_json(stats_path(Path(shard_tar)), stats)
    return Path(shard_tar)
