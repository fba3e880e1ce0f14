"""The local retrieval bank: every precomputed image in GILL's retrieval space, searchable by an [IMG0] embedding.

GILL retrieves an image by comparing the text-side embedding ``text_proj(h[IMG0])`` with the image-side
embedding ``image_proj(CLIP pooler_output)`` of every candidate image (paper section 3.2, "retrieval"). The
official code embeds CC3M once with a trained checkpoint's ``visual_fc`` (docs/official-gill.md §3.2) and, at inference,
scores the bank by one matrix product and downloads the top images from their URLs (official §4.1, 4.4).
:func:`build_bank` does the same from the frozen CLIP features that ``gill data precompute`` already wrote
(:mod:`gill.data.precompute`), and :class:`RetrievalBank` searches the result:

* rows are ``normalize(image_proj(vision.npy row))`` in float32, one per precomputed sample, in shard order;
* :meth:`RetrievalBank.search` returns **plain cosine** scores plus ``scaled_score = cosine * exp(logit_scale)``.
  The official bank multiplies its rows by the logit scale while the generated images are ranked by raw cosine,
  so its retrieval and generation scores live on different scales (official §4.4 step 2 vs generation step 3,
  §8.9). Here both are reported on both scales, and the decision code can compare like with like;
* images and captions are read from the local webdataset shards the features came from, never from a URL
  (the official demo downloads them live from CC3M, with dead links and latency: official §8.9);
* ``exclude_rows`` keeps already-shown images out of a result (the official code scores them -1000,
  official §4.4);
* a bank belongs to one checkpoint (its rows come from that checkpoint's ``image_proj``): it lives under the
  checkpoint's id and refuses to be used with another.

Layout of one bank folder (the application keeps one per checkpoint, ``<work folder>/index/<checkpoint id>/``;
written atomically: a crash leaves the old bank or none, never half of one)::

    embeddings.npy   (N, R) float32, L2-normalised rows
    rows.json        {"keys": [...]}: the sample key of each row; a row's split and shard come from the
                     manifest's shard table (rows are contiguous per shard)
    manifest.json    format and version, ``root`` (the portable root folder relative to the bank folder, or
                     null), checkpoint id and path, logit scale, dim, count, splits, the shard table
                     (split, name, image tar and feature folder, first row, count, feature fingerprint), the
                     approximate index's parameters, build seconds, creation time; paths inside the root are
                     relative to it, others absolute, so a work folder holding its bank can be moved whole
    ivf.faiss        only for approximate banks: a FAISS IVF-Flat index over the same rows

Search is **exact** (one matrix product and a partial sort per chunk of rows; memory bound: 16 ms per query at
100k rows, 0.2-0.45 s at 3.3M on 2 shared CPU cores) or **approximate** through :class:`ApproximateIndex`
(FAISS IVF-Flat, inner product, ``nlist = 2 sqrt(N)``, ``nprobe`` scanning ~64k rows: at 3.3M rows a 93 s build,
7.6 ms p50 per query and recall@10 0.989 against exact search on clustered data; ``bench/retrieval.py``).
``approximate="auto"`` builds the index from :data:`AUTO_APPROXIMATE_MIN_ROWS` rows on. Exact search runs in
numpy's BLAS threads, FAISS in as many OpenMP threads as torch uses.

Memory: the rows are memory-mapped (exact search streams them from the page cache); an approximate bank also
holds the index's own copy of the rows in RAM (N x R x 4 bytes: 3.4 GB at 3.3M rows of 256).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from gill.checkpoint import ADAPTERS_FILE, load_adapters, verify_checksum
from gill.data.precompute import VISION_FILE, decode_image, read_feature_manifest
from gill.data.reader import open_feature_shards
from gill.data.shards import ShardIndex, ShardSample, SplitFolders, index_shard, read_samples
from gill.errors import GillError, InputError
from gill.utils.io import atomic_directory, atomic_write_json, chmod_like_open, sha256_file
from gill.utils.paths import resolve_stored, to_stored

logger = logging.getLogger(__name__)

FORMAT = "gill-retrieval-bank"
"""Value of ``manifest.json["format"]``."""
FORMAT_VERSION = 2
"""Bump when the layout or the computation changes; banks of another version are rebuilt, never read."""
EMBEDDINGS_FILE = "embeddings.npy"
ROWS_FILE = "rows.json"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "ivf.faiss"
CHECKPOINT_ID_CHARS = 16
"""Hex characters of the adapters' sha256 that name a checkpoint's bank."""
AUTO_APPROXIMATE_MIN_ROWS = 200_000
"""``approximate="auto"`` builds a FAISS index from this many rows on (below, exact search takes < 25 ms)."""
EXACT_CHUNK_ROWS = 1 << 18
"""Rows per matrix product in exact search (bounds the (B, rows) score block to 1 MiB per query)."""
DEFAULT_BATCH_SIZE = 4096
"""Feature rows per ``image_proj`` forward when building."""

Approximate = bool | Literal["auto"]
SearchMethod = Literal["exact", "approx", "auto"]


def _hint(checkpoint: Path | str) -> str:
    return f"build it: gill index build --checkpoint {checkpoint} (or build_bank)"


# -- identity and layout --------------------------------------------------------------------------------------


def checkpoint_id(checkpoint_dir: str | os.PathLike[str]) -> str:
    """First :data:`CHECKPOINT_ID_CHARS` hex chars of the sha256 of the checkpoint's ``adapters.safetensors``.

    Raises:
        InputError: when the folder holds no adapters file, or one that differs from the sha256 its
            ``config.json`` records ("checkpoint corrupted": a damaged file is not another checkpoint).
    """

    path = Path(checkpoint_dir) / ADAPTERS_FILE
    if not path.is_file():
        hint = "pass a folder written by gill train (runs/<id>/best) or gill import-official"
        raise InputError(f"{str(checkpoint_dir)!r} is not a gill checkpoint", [f"{ADAPTERS_FILE} not found"], hint=hint)
    digest = sha256_file(path)
    verify_checksum(checkpoint_dir, ADAPTERS_FILE, digest)
    return digest[:CHECKPOINT_ID_CHARS]


def bank_dir(banks: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str]) -> Path:
    """``<banks>/<checkpoint id>``: the bank folder of a checkpoint in a folder of banks (one per checkpoint)."""
    return Path(banks) / checkpoint_id(checkpoint_dir)


@dataclass(frozen=True, kw_only=True)
class BankShard:
    """One image shard's contiguous block of bank rows."""

    split: str
    """Dataset split (``train``, ``val``)."""
    name: str
    """Shard name, shared by the image tar and the feature folder (``00000``)."""
    tar: str
    """The image shard (relative to the bank's root when inside it, posix; else absolute)."""
    features: str
    """The feature shard's folder (relative to the bank's root when inside it, posix; else absolute)."""
    start: int
    """First bank row of the shard."""
    count: int
    """Rows of the shard."""
    fingerprint: str
    """The feature shard's fingerprint (:mod:`gill.data.precompute`): it changes when the features do."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the manifest's shard table)."""
        return {
            "split": self.split,
            "name": self.name,
            "tar": self.tar,
            "features": self.features,
            "start": self.start,
            "count": self.count,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True, kw_only=True)
class BankInfo:
    """What :func:`build_bank` did."""

    path: Path
    """The bank folder."""
    count: int
    """Rows (images)."""
    dim: int
    """R: width of the retrieval embeddings."""
    checkpoint_id: str
    """:func:`checkpoint_id` of the checkpoint whose ``image_proj`` made the rows."""
    approximate: bool
    """Whether the bank has a FAISS index."""
    seconds: float
    """Wall time of the build (for a skipped build: of the run that wrote the bank)."""
    skipped: bool = False
    """True when an up-to-date bank already existed."""


@dataclass(frozen=True, kw_only=True)
class Hit:
    """One retrieved image (GILL paper section 3.2; official §4.4)."""

    row: int
    """Bank row (pass it in ``exclude_rows`` to keep the image out of later results)."""
    key: str
    """Sample key in its image shard."""
    split: str
    """Dataset split of the image."""
    shard: str
    """The image shard's tar as the bank records it (relative to the bank's root, e.g. the work folder)."""
    score: float
    """Cosine between the query and the image's retrieval embedding."""
    scaled_score: float
    """``score * exp(logit_scale)``: the scale of the official retrieval scores and of the training logits."""


# -- approximate search ---------------------------------------------------------------------------------------


SCAN_ROWS = 65_536
"""Default scan budget: ``nprobe`` is chosen so a query scores about this many rows (~5 ms on 2 CPU cores).

A fixed budget keeps latency flat across bank sizes and scans a larger share of a smaller bank, where a fixed
``nprobe`` loses recall (``bench/retrieval.py``, clustered rows: nprobe 64 gives recall@10 0.90 at 100k, 0.97 at
1M, 0.99 at 3.3M; the budget gives nprobe 415 / 132 / 73 and recall 0.995 / 0.980 / 0.989 at 6-8 ms)."""
MIN_NPROBE = 16
"""Fewest lists a default query scans."""
MIN_POINTS_PER_LIST = 39
"""FAISS's k-means wants at least 39 training points per centroid; ``nlist`` never asks for fewer."""
TRAIN_POINTS_PER_LIST = 48
"""k-means training sample per inverted list (a random subset of the rows)."""
KMEANS_ITERATIONS = 15
"""k-means iterations when training the coarse quantizer."""
ADD_CHUNK_ROWS = 1 << 18
"""Rows added to the index per call (progress granularity)."""


def default_nlist(count: int) -> int:
    """Inverted lists for ``count`` rows: ``2 sqrt(N)``, at most one per :data:`MIN_POINTS_PER_LIST` rows.

    ``bench/retrieval.py`` at 3.3M clustered rows (2 CPU cores): 2 sqrt(N) = 3633 lists build in ~1.5 min and
    reach recall@10 0.984-0.990 at nprobe 16-128. Exploratory runs before it: sqrt(N) lists reached only 0.958
    at the same ~5 ms per query; 4 sqrt(N) lists (HNSW coarse quantizer) took ~4.5 min to build for 0.97.
    """
    return max(1, min(round(2 * math.sqrt(count)), count // MIN_POINTS_PER_LIST))


def default_nprobe(count: int, nlist: int) -> int:
    """Lists to scan so a query scores about :data:`SCAN_ROWS` of ``count`` rows (at least :data:`MIN_NPROBE`)."""
    return min(nlist, max(MIN_NPROBE, math.ceil(nlist * SCAN_ROWS / max(count, 1))))


def _faiss() -> Any:
    """The faiss module, with its OpenMP threads set to torch's (so ``torch.set_num_threads`` governs both)."""

    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


class ApproximateIndex:
    """FAISS IVF-Flat over L2-normalised rows with the inner-product metric (so scores are cosines).

    Rows are split into ``nlist`` inverted lists by spherical k-means; a query scans the ``nprobe`` lists whose
    centroids are closest and scores their rows exactly (no compression, so the scores equal exact search's).
    Row ids are the positions in the vectors passed to :meth:`build`.
    """

    KIND = "IVF-Flat"

    def __init__(self, index: Any, nprobe: int | None = None) -> None:
        self.index = index
        self.nprobe = default_nprobe(self.count, self.nlist) if nprobe is None else nprobe
        """Lists scanned per query unless a search says otherwise."""

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> ApproximateIndex:
        """Train the coarse quantizer on a random sample of ``vectors`` (N, R) and add every row.

        Args:
            vectors: (N, R) float32 L2-normalised rows (a memory map is fine: rows are read in chunks).
            nlist: inverted lists (default :func:`default_nlist`).
            nprobe: lists scanned per query by default (default :func:`default_nprobe`).
            seed: seeds the training sample and k-means.
            progress: show a progress bar while adding rows.
        """

        faiss = _faiss()
        n, dim = vectors.shape
        nlist = default_nlist(n) if nlist is None else nlist
        if n == 0 or not 1 <= nlist <= n:
            problem = f"nlist: must be in [1, {n}] for {n} rows, got {nlist}"
            raise InputError("cannot build an approximate index", [problem])
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter, index.cp.seed, index.cp.spherical = KMEANS_ITERATIONS, seed, True
        index.cp.min_points_per_centroid = 1  # tiny banks get one list: no warning for them
        sample = np.sort(np.random.default_rng(seed).permutation(n)[: min(n, TRAIN_POINTS_PER_LIST * nlist)])
        start = time.perf_counter()
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))  # (S, R)
        trained = time.perf_counter() - start
        with tqdm(total=n, unit="row", desc="index rows", disable=not progress, dynamic_ncols=True) as bar:
            for first in range(0, n, ADD_CHUNK_ROWS):
                chunk = np.ascontiguousarray(vectors[first : first + ADD_CHUNK_ROWS], dtype=np.float32)  # (c, R)
                index.add(chunk)
                bar.update(len(chunk))
        logger.info(
            "IVF-Flat index: %d rows, %d lists, trained on %d rows in %.1f s, added in %.1f s",
            n,
            nlist,
            len(sample),
            trained,
            time.perf_counter() - start - trained,
        )
        return cls(index, nprobe)

    @property
    def count(self) -> int:
        """Rows in the index."""
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        """Inverted lists."""
        return int(self.index.nlist)

    def params(self) -> dict[str, Any]:
        """What the manifest records about the index."""

        return {
            "kind": self.KIND,
            "metric": "inner_product",
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "kmeans_iterations": KMEANS_ITERATIONS,
            "faiss_version": faiss.__version__,
        }

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, R) normalised queries -> (B, k) scores and rows, best first; missing results are row -1."""
        faiss = _faiss()
        nprobe = self.nprobe if nprobe is None else nprobe
        if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1:
            raise InputError("invalid approximate search", [f"nprobe: must be a positive int, got {nprobe!r}"])
        params = faiss.SearchParametersIVF(nprobe=min(nprobe, self.nlist))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
        return scores, rows

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to ``path`` atomically (temporary sibling, then rename)."""
        faiss = _faiss()
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            chmod_like_open(tmp)  # mkstemp made it 0600: a teammate's or a server's reader would be refused
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], nprobe: int | None = None) -> ApproximateIndex:
        """Read an index written by :meth:`save`."""
        return cls(_faiss().read_index(str(path)), nprobe)


# -- exact search ---------------------------------------------------------------------------------------------


def _merge_top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` best columns of (B, M) ``scores`` / ``rows`` per query (unordered)."""
    if scores.shape[1] <= k:
        return scores, rows
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (B, k)
    return np.take_along_axis(scores, part, 1), np.take_along_axis(rows, part, 1)


def exact_search(
    embeddings: np.ndarray, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of (B, R) ``queries`` against (N, R) ``embeddings`` (a memory map is fine).

    One matrix product and a partial sort per :data:`EXACT_CHUNK_ROWS` rows. ``exclude[b]`` lists rows query ``b``
    must not return. Returns (B, k') scores and rows (k' = min(k, N)), best first, ties broken by the lower row;
    excluded rows that had to fill a result come back with score -inf.
    """
    n, b = len(embeddings), len(queries)
    k = min(k, n)
    best_scores, best_rows = np.empty((b, 0), np.float32), np.empty((b, 0), np.int64)
    for first in range(0, n, EXACT_CHUNK_ROWS):
        block = np.asarray(embeddings[first : first + EXACT_CHUNK_ROWS], dtype=np.float32)  # (c, R)
        scores = queries @ block.T  # (B, c)
        for q, rows in enumerate(exclude or ()):
            inside = rows[(rows >= first) & (rows < first + len(block))] - first
            scores[q, inside] = -np.inf
        chunk_rows = np.broadcast_to(np.arange(first, first + len(block), dtype=np.int64), scores.shape)
        scores, chunk_rows = _merge_top_k(scores, chunk_rows, k)
        best_scores, best_rows = _merge_top_k(
            np.concatenate([best_scores, scores], 1), np.concatenate([best_rows, chunk_rows], 1), k
        )
    order = np.stack([np.lexsort((r, -s)) for s, r in zip(best_scores, best_rows, strict=True)]) if b else best_rows
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)


# -- building -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _RetrievalProjection:
    """The image side of a checkpoint's retrieval heads."""

    checkpoint_id: str
    checkpoint_path: str
    image_proj: nn.Linear
    """Linear(Dv -> R), float32, eval mode."""
    logit_scale: float
    """``exp(logit_scale)`` as clamped by :meth:`gill.adapters.RetrievalHeads.scale`."""
    vision: dict[str, str]
    """Id and revision of the vision backbone the adapters were trained on."""


def _load_projection(checkpoint_dir: Path, root: Path | None) -> tuple[_RetrievalProjection | None, list[str]]:

    try:
        ckpt_id = checkpoint_id(checkpoint_dir)
        loaded = load_adapters(checkpoint_dir)
    except GillError as err:
        return None, [f"checkpoint {str(checkpoint_dir)!r}: {err.message}", *err.problems]
    heads = loaded.adapters.retrieval.float().eval()
    vision = loaded.config.backbones.vision
    return _RetrievalProjection(
        checkpoint_id=ckpt_id,
        checkpoint_path=to_stored(checkpoint_dir, root),
        image_proj=heads.image_proj,
        logit_scale=float(heads.scale().detach()),
        vision={"id": vision.id, "revision": vision.revision},
    ), []


@dataclass(frozen=True, kw_only=True)
class _FeatureSource:
    """One feature shard as its manifest describes it (cheap: no array or tar is read)."""

    split: SplitFolders
    folder: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def count(self) -> int:
        return int(self.manifest.get("count", 0))


def _feature_sources(splits: Sequence[SplitFolders]) -> tuple[list[_FeatureSource], list[str]]:
    """Every feature shard of ``splits`` with its manifest, and what is missing."""
    sources, problems = [], []
    for split in splits:
        subs = _subfolders(split.features)
        if not subs:
            problems.append(f"split {split.name!r}: no precomputed features under {split.features}")
        for sub in subs:
            manifest = read_feature_manifest(sub)
            if manifest is None:
                problems.append(f"feature shard {split.name}/{sub.name}: no readable manifest.json (interrupted?)")
            else:
                sources.append(_FeatureSource(split=split, folder=sub, manifest=manifest))
    return sources, problems


def _shard_table(sources: list[_FeatureSource], root: Path | None) -> list[BankShard]:
    table, start = [], 0
    for src in sources:
        table.append(
            BankShard(
                split=src.split.name,
                name=src.name,
                tar=to_stored(src.split.images / f"{src.name}.tar", root),
                features=to_stored(src.folder, root),
                start=start,
                count=src.count,
                fingerprint=str(src.manifest.get("fingerprint")),
            )
        )
        start += src.count
    return table


def _resolve_approximate(approximate: Approximate, count: int) -> bool:
    if approximate == "auto":
        return count >= AUTO_APPROXIMATE_MIN_ROWS
    if isinstance(approximate, bool):
        return approximate
    problem = f"approximate: must be 'auto', True or False, got {approximate!r}"
    raise InputError("invalid bank build arguments", [problem])


def _signature(checkpoint: str, splits: Sequence[str], shards: list[BankShard], approximate: bool) -> dict[str, Any]:
    """What decides whether a bank is up to date."""
    return {
        "format_version": FORMAT_VERSION,
        "checkpoint_id": checkpoint,
        "splits": list(splits),
        "shards": [[s.split, s.name, s.count, s.fingerprint] for s in shards],
        "approximate": approximate,
    }


def _manifest_signature(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "format_version": manifest.get("format_version"),
        "checkpoint_id": manifest.get("checkpoint", {}).get("id"),
        "splits": manifest.get("splits"),
        "shards": [[s["split"], s["name"], s["count"], s["fingerprint"]] for s in manifest.get("shards", [])],
        "approximate": manifest.get("approximate") is not None,
    }


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """A bank's ``manifest.json``, or None when absent, unreadable or not a bank's."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _up_to_date(path: Path, signature: dict[str, Any]) -> dict[str, Any] | None:
    manifest = _read_manifest(path)
    if manifest is None or _manifest_signature(manifest) != signature:
        return None
    files = [EMBEDDINGS_FILE, ROWS_FILE] + ([INDEX_FILE] if signature["approximate"] else [])
    return manifest if all((path / f).is_file() for f in files) else None


def _validated_keys(
    splits: Sequence[SplitFolders], table: list[BankShard], projection: _RetrievalProjection
) -> list[list[str]]:
    """Keys of every shard of ``table``, after checking features against their image shards; one error for all."""

    problems, keys = [], {}
    for folders in splits:
        split = folders.name
        try:
            shards = open_feature_shards(folders, verify=False)
        except InputError as err:
            problems += [f"split {split!r}: {p}" for p in err.problems]
            continue
        for shard in shards:
            keys[(split, shard.name)] = shard.keys
            width = shard.manifest.get("arrays", {}).get("vision", {}).get("shape", [0, None])[1]
            if width != projection.image_proj.in_features:
                problems.append(
                    f"feature shard {split}/{shard.name}: vision width {width}, the checkpoint's "
                    f"image_proj takes {projection.image_proj.in_features}"
                )
            encoder = shard.manifest.get("encoders", {}).get("vision", {})
            if encoder.get("id") is not None and encoder.get("id") != projection.vision["id"]:
                logger.warning(
                    "feature shard %s/%s was computed with vision encoder %s, the checkpoint was trained on %s",
                    split,
                    shard.name,
                    encoder.get("id"),
                    projection.vision["id"],
                )
    missing = [f"{s.split}/{s.name}" for s in table if (s.split, s.name) not in keys]
    if missing and not problems:
        problems.append(f"feature shards changed while building: {missing}")
    if problems:
        hint = "re-run `gill data precompute` for these splits (it recomputes stale shards)"
        raise InputError("the precomputed features cannot make a retrieval bank", problems, hint=hint)
    return [keys[(s.split, s.name)] for s in table]


@torch.no_grad()
def project_images(image_proj: nn.Linear, features: np.ndarray) -> np.ndarray:
    """(b, Dv) CLIP features (any float dtype) -> (b, R) float32 ``normalize(image_proj(x))`` (paper section 3.2)."""
    x = torch.from_numpy(np.array(features, dtype=np.float32))  # (b, Dv), a writable copy
    return F.normalize(image_proj(x), dim=-1).numpy()  # (b, R)


def _write_embeddings(
    folder: Path,
    table: list[BankShard],
    root: Path | None,
    projection: _RetrievalProjection,
    batch_size: int,
    progress: bool,
) -> None:

    n, dim = sum(s.count for s in table), projection.image_proj.out_features
    out = np.lib.format.open_memmap(folder / EMBEDDINGS_FILE, mode="w+", dtype=np.float32, shape=(n, dim))  # (N, R)
    with tqdm(total=n, unit="img", desc="embed bank", disable=not progress, dynamic_ncols=True) as bar:
        for shard in table:
            vision = np.load(resolve_stored(shard.features, root) / VISION_FILE, mmap_mode="r")  # (n, Dv)
            for first in range(0, shard.count, batch_size):
                rows = project_images(projection.image_proj, vision[first : first + batch_size])  # (b, R)
                out[shard.start + first : shard.start + first + len(rows)] = rows
                bar.update(len(rows))
    out.flush()
    del out


def build_bank(
    splits: SplitFolders | Sequence[SplitFolders],
    checkpoint_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    portable_root: str | os.PathLike[str] | None = None,
    approximate: Approximate = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    nlist: int | None = None,
    progress: bool = True,
) -> BankInfo:
    """Embed every precomputed image of ``splits`` with the checkpoint's ``image_proj`` into the bank folder
    ``out``, atomically.

    GILL paper section 3.2 (the image side of retrieval) and official §3.2 / 4.1 (the official bank). A bank
    that is up to date (same checkpoint, splits, feature fingerprints and approximate setting) is kept.

    Args:
        splits: the splits whose images the bank holds: their image shards and precomputed feature shards.
        checkpoint_dir: a checkpoint folder (``gill train``'s ``runs/<id>/best``, or an import).
        out: the bank folder (replaced atomically; :func:`bank_dir` names one per checkpoint).
        portable_root: a folder holding the bank, the shards and the checkpoint (e.g. the work folder): paths
            inside it are recorded relative to it, so it can be moved as a whole (None: absolute paths).
        approximate: also build a FAISS index (``auto``: from :data:`AUTO_APPROXIMATE_MIN_ROWS` rows on).
        batch_size: feature rows per forward.
        nlist: inverted lists of the FAISS index (default :func:`default_nlist`).
        progress: show progress bars.
    Raises:
        InputError: every problem at once: missing or invalid checkpoint, splits without features, feature
            shards that do not match their image shards, a vision width the checkpoint does not take.
    """
    checkpoint_dir, path, start = Path(checkpoint_dir), Path(out), time.perf_counter()
    root = Path(portable_root).resolve() if portable_root is not None else None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError("invalid bank build arguments", [f"batch_size: must be a positive int, got {batch_size!r}"])
    splits = [splits] if isinstance(splits, SplitFolders) else list(dict.fromkeys(splits))
    projection, problems = _load_projection(checkpoint_dir, root)
    sources, feature_problems = _feature_sources(splits)
    problems += feature_problems or ([] if splits else ["splits: give at least one split"])
    problems += [f"splits: {name!r} is given twice" for name in _repeated(s.name for s in splits)]
    if problems:
        hints = ["precompute the features first: gill data precompute --split S"] * bool(feature_problems)
        hints += ["train a checkpoint first: gill train"] * (projection is None)
        raise InputError("cannot build the retrieval bank", problems, hint="; ".join(hints) or None)
    assert projection is not None
    table = _shard_table(sources, root)
    count, use_index = sum(s.count for s in table), _resolve_approximate(approximate, sum(s.count for s in table))
    names = [s.name for s in splits]
    signature = _signature(projection.checkpoint_id, names, table, use_index)
    if (previous := _up_to_date(path, signature)) is not None:
        logger.info("retrieval bank %s is up to date (%d rows), skipping", path, previous["count"])
        return _info(path, previous, skipped=True)
    keys = _validated_keys(splits, table, projection)
    with atomic_directory(path) as tmp:
        _write_embeddings(tmp, table, root, projection, batch_size, progress)
        atomic_write_json(tmp / ROWS_FILE, {"keys": [k for shard_keys in keys for k in shard_keys]}, indent=0)
        index_params = None
        if use_index:
            index_start = time.perf_counter()
            vectors = np.load(tmp / EMBEDDINGS_FILE, mmap_mode="r")  # (N, R)
            index = ApproximateIndex.build(vectors, nlist=nlist, progress=progress)
            index.save(tmp / INDEX_FILE)
            index_seconds = round(time.perf_counter() - index_start, 3)
            index_params = {"file": INDEX_FILE, **index.params(), "seconds": index_seconds}
            del vectors, index
        manifest = _bank_manifest(projection, names, table, count, index_params, time.perf_counter() - start)
        manifest["root"] = Path(os.path.relpath(root, path.resolve())).as_posix() if root is not None else None
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    logger.info(
        "built retrieval bank %s: %d rows, dim %d, %s, in %.1f s",
        path,
        count,
        manifest["dim"],
        "approximate index" if use_index else "exact search only",
        manifest["seconds"],
    )
    return _info(path, manifest, skipped=False)


def _repeated(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def _bank_manifest(
    projection: _RetrievalProjection,
    splits: Sequence[str],
    table: list[BankShard],
    count: int,
    index_params: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    dim = projection.image_proj.out_features
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "root": None,
        "checkpoint": {"id": projection.checkpoint_id, "path": projection.checkpoint_path},
        "vision_backbone": projection.vision,
        "logit_scale": projection.logit_scale,
        "dim": dim,
        "count": count,
        "splits": list(splits),
        "shards": [s.to_dict() for s in table],
        "embeddings": {"file": EMBEDDINGS_FILE, "dtype": "float32", "normalised": True, "shape": [count, dim]},
        "rows_file": ROWS_FILE,
        "approximate": index_params,
        "seconds": round(seconds, 3),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _info(path: Path, manifest: dict[str, Any], *, skipped: bool) -> BankInfo:
    return BankInfo(
        path=path,
        count=int(manifest["count"]),
        dim=int(manifest["dim"]),
        checkpoint_id=manifest["checkpoint"]["id"],
        approximate=manifest.get("approximate") is not None,
        seconds=float(manifest["seconds"]),
        skipped=skipped,
    )


# -- the bank -------------------------------------------------------------------------------------------------


def _as_queries(queries: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """(B, R) or (R,) tensor/array -> (B, R) float32 L2-normalised numpy; InputError on a wrong shape or NaN."""
    array = queries.detach().to("cpu", torch.float32).numpy() if isinstance(queries, torch.Tensor) else queries
    array = np.asarray(array, dtype=np.float32)
    array = array[None] if array.ndim == 1 else array
    problems = []
    if array.ndim != 2 or array.shape[1] != dim:
        problems.append(f"queries: expected shape (B, {dim}) or ({dim},), got {tuple(np.shape(queries))}")
    elif not np.isfinite(array).all():
        problems.append("queries: contain NaN or infinite values")
    if problems:
        raise InputError("invalid retrieval queries", problems)
    norms = np.linalg.norm(array, axis=1, keepdims=True)  # (B, 1)
    return array / np.maximum(norms, np.finfo(np.float32).tiny)


def _as_exclusions(exclude_rows: Sequence[Iterable[int] | None] | None, batch: int) -> list[np.ndarray] | None:
    if exclude_rows is None:
        return None
    exclude_rows = list(exclude_rows)
    if len(exclude_rows) != batch:
        raise InputError(
            "invalid exclude_rows",
            [f"one iterable of rows per query: {batch} queries, got {len(exclude_rows)} entries"],
        )
    return [np.fromiter((int(r) for r in rows or ()), dtype=np.int64) for rows in exclude_rows]


class RetrievalBank:
    """A built bank, opened for search (GILL paper section 3.2; official §4.4): rows memory-mapped, keys in RAM.

    Use :meth:`open` with the checkpoint that will make the queries (it refuses a bank of another checkpoint).
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        embeddings: np.ndarray,
        keys: list[str],
        index: ApproximateIndex | None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.embeddings = embeddings  # (N, R) float32, memory-mapped
        self.keys = keys
        self.index = index
        root = manifest.get("root")
        self.root = (path / root).resolve() if root is not None else None  # the recorded paths are relative to it
        self.shards = [BankShard(**s) for s in manifest["shards"]]
        self._starts = np.array([s.start for s in self.shards], dtype=np.int64)
        self._shard_indexes: dict[str, ShardIndex] = {}

    # -- opening --

    @classmethod
    def open(cls, banks: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str]) -> RetrievalBank:
        """The bank of ``checkpoint_dir`` in the folder of banks ``banks`` (:func:`bank_dir`); InputError naming
        the banks present when it has none."""
        banks, checkpoint_dir = Path(banks), Path(checkpoint_dir)
        ckpt = checkpoint_id(checkpoint_dir)
        path = banks / ckpt
        if _read_manifest(path) is None:
            others = [f"{m['checkpoint']['id']} (checkpoint {m['checkpoint']['path']})" for m in _banks(banks)]
            problems = [f"expected {path}", f"banks under {banks}: {', '.join(others) or 'none'}"]
            raise InputError(
                f"no retrieval bank for checkpoint {str(checkpoint_dir)!r} (id {ckpt})",
                problems,
                hint=_hint(checkpoint_dir),
            )
        return cls.load(path, ckpt, checkpoint_dir=checkpoint_dir)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expected_checkpoint_id: str | None = None,
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
    ) -> RetrievalBank:
        """Open the bank folder ``path``.

        Raises:
            InputError: no bank there, a bank of another format version, one built by a checkpoint other than
                ``expected_checkpoint_id`` (naming both), or damaged files.
        """
        path = Path(path)
        hint = _hint(checkpoint_dir if checkpoint_dir is not None else "<checkpoint>")
        manifest = _read_manifest(path)
        if manifest is None:
            raise InputError(
                f"no retrieval bank at {str(path)!r}", [f"{MANIFEST_FILE} missing or not a {FORMAT}"], hint=hint
            )
        if (version := manifest.get("format_version")) != FORMAT_VERSION:
            raise InputError(
                f"the retrieval bank at {str(path)!r} has format version {version}",
                [f"this gill reads version {FORMAT_VERSION}"],
                hint="re-" + hint,
            )
        built_by = manifest["checkpoint"]["id"]
        if expected_checkpoint_id is not None and built_by != expected_checkpoint_id:
            requested = f"requested: checkpoint id {expected_checkpoint_id}"
            raise InputError(
                f"the retrieval bank at {str(path)!r} was built by another checkpoint",
                [
                    f"bank: checkpoint id {built_by} ({_bank_path(path, manifest, manifest['checkpoint']['path'])})",
                    requested + (f" ({checkpoint_dir})" if checkpoint_dir is not None else ""),
                ],
                hint="its rows come from that checkpoint's image_proj; " + hint,
            )
        return cls(path, manifest, *_read_bank_files(path, manifest))

    # -- facts --

    @property
    def count(self) -> int:
        """Rows (images)."""
        return len(self.keys)

    @property
    def dim(self) -> int:
        """R: width of the retrieval embeddings."""
        return int(self.manifest["dim"])

    @property
    def checkpoint_id(self) -> str:
        """Id of the checkpoint that built the bank."""
        return str(self.manifest["checkpoint"]["id"])

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)`` of that checkpoint (``scaled_score = score * logit_scale``)."""
        return float(self.manifest["logit_scale"])

    @property
    def has_index(self) -> bool:
        """Whether approximate search is available."""
        return self.index is not None

    # -- search --

    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        k: int = 3,
        *,
        method: SearchMethod = "auto",
        exclude_rows: Sequence[Iterable[int] | None] | None = None,
        nprobe: int | None = None,
    ) -> list[list[Hit]]:
        """The top-``k`` images of each query, best first (GILL paper section 3.2; official §4.4).

        Args:
            queries: (B, R) or (R,) text-side retrieval embeddings (normalised here).
            k: images per query (fewer when the bank, after exclusions, has fewer).
            method: ``exact`` (matrix product), ``approx`` (FAISS; needs an approximate bank) or ``auto``
                (approximate when the bank has an index).
            exclude_rows: per query, bank rows never to return (e.g. images already shown), or None.
            nprobe: inverted lists to scan (approximate search; default the index's).
        Returns:
            Per query, a list of :class:`Hit` with cosine ``score`` and ``scaled_score``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError("invalid retrieval arguments", [f"k: must be a positive int, got {k!r}"])
        if method not in ("exact", "approx", "auto"):
            raise InputError("invalid retrieval arguments", [f"method: must be exact, approx or auto, got {method!r}"])
        if method == "approx" and self.index is None:
            raise InputError(
                f"the retrieval bank at {str(self.path)!r} has no approximate index",
                [],
                hint="rebuild it with --approximate, or search with method='exact'",
            )
        q = _as_queries(queries, self.dim)  # (B, R)
        exclude = _as_exclusions(exclude_rows, len(q))
        if self.index is not None and method != "exact":
            scores, rows = self._approximate(q, k, exclude, nprobe)
        else:
            scores, rows = exact_search(self.embeddings, q, k, exclude)  # (B, k), (B, k)
        return [
            [self.hit(int(r), float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0 and np.isfinite(s)]
            for srow, rrow in zip(scores, rows, strict=True)
        ]

    def _approximate(
        self, q: np.ndarray, k: int, exclude: list[np.ndarray] | None, nprobe: int | None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        assert self.index is not None
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        scores, rows = self.index.search(q, min(k + extra, self.count), nprobe)  # (B, k + extra)
        if exclude:
            for b, excluded in enumerate(exclude):
                rows[b, np.isin(rows[b], excluded)] = -1
        keep = [np.flatnonzero(r >= 0)[:k] for r in rows]
        return [s[i] for s, i in zip(scores, keep, strict=True)], [r[i] for r, i in zip(rows, keep, strict=True)]

    def hit(self, row: int, score: float) -> Hit:
        """The :class:`Hit` of bank row ``row`` with cosine ``score``."""
        shard = self.shard_of(row)
        return Hit(
            row=row,
            key=self.keys[row],
            split=shard.split,
            shard=shard.tar,
            score=score,
            scaled_score=score * self.logit_scale,
        )

    def shard_of(self, row: int) -> BankShard:
        """The image shard holding bank row ``row``."""
        if not 0 <= row < self.count:
            raise IndexError(f"row {row} out of range for a bank of {self.count} rows")
        return self.shards[int(np.searchsorted(self._starts, row, side="right")) - 1]

    # -- images --

    def sample(self, hit: Hit) -> ShardSample:
        """The stored sample (JPEG bytes, caption, metadata) of ``hit``, read from its local image shard."""
        if not 0 <= hit.row < self.count or self.keys[hit.row] != hit.key:
            raise InputError("the hit does not belong to this bank", [f"row {hit.row}, key {hit.key!r}"])
        shard = self.shard_of(hit.row)
        index = self._shard_index(shard)
        if hit.key not in index.members:
            hint = f"the shard changed after the bank was built; re-{_hint('<checkpoint>')}"
            raise InputError(f"image shard {shard.tar} no longer holds sample {hit.key!r}", [], hint=hint)
        return read_samples(index, [hit.key])[0]

    def image(self, hit: Hit) -> Image.Image:
        """The RGB image of ``hit`` (decoded from the local shard; never downloaded)."""
        return decode_image(self.sample(hit), Path(self.shard_of(hit.row).tar).name)

    def caption(self, hit: Hit) -> str:
        """The caption stored with ``hit``'s image."""
        return self.sample(hit).caption

    def shard_tar(self, shard: BankShard) -> Path:
        """The image shard's tar on this machine."""
        return resolve_stored(shard.tar, self.root)

    def shard_features(self, shard: BankShard) -> Path:
        """The feature shard's folder on this machine (its ``vision.npy`` holds the rows' CLIP features)."""
        return resolve_stored(shard.features, self.root)

    def _shard_index(self, shard: BankShard) -> ShardIndex:
        if shard.tar not in self._shard_indexes:
            tar = self.shard_tar(shard)
            if not tar.is_file():
                hint = "the bank reads images from the shards it was built from; restore them"
                raise InputError(f"image shard {str(tar)!r} of the retrieval bank is missing", [], hint=hint)
            self._shard_indexes[shard.tar] = index_shard(tar)
        return self._shard_indexes[shard.tar]


def _read_bank_files(path: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, list[str], ApproximateIndex | None]:
    """Embeddings (memory-mapped), keys and the optional index; one InputError listing every damaged file."""
    problems, embeddings, keys, index = [], np.empty((0, 0), np.float32), [], None
    count, dim = int(manifest["count"]), int(manifest["dim"])
    try:
        embeddings = np.load(path / EMBEDDINGS_FILE, mmap_mode="r")
        if embeddings.shape != (count, dim) or embeddings.dtype != np.float32:
            problems.append(
                f"{EMBEDDINGS_FILE}: {embeddings.dtype} {embeddings.shape}, manifest says float32 {(count, dim)}"
            )
    except (OSError, ValueError) as err:
        problems.append(f"{EMBEDDINGS_FILE}: {err}")
    try:
        keys = list(json.loads((path / ROWS_FILE).read_text(encoding="utf-8"))["keys"])
        if len(keys) != count:
            problems.append(f"{ROWS_FILE}: {len(keys)} keys, manifest says {count} rows")
    except (OSError, ValueError, KeyError, TypeError) as err:
        problems.append(f"{ROWS_FILE}: {err}")
    if (params := manifest.get("approximate")) is not None:
        try:
            index = ApproximateIndex.load(path / params["file"], int(params["nprobe"]))
            if index.count != count:
                problems.append(f"{params['file']}: {index.count} rows, manifest says {count}")
        except (RuntimeError, OSError, KeyError) as err:
            problems.append(f"{params.get('file', INDEX_FILE)}: {err}")
    if problems:
        raise InputError(
            f"the retrieval bank at {str(path)!r} is damaged",
            problems,
            hint="rebuild it: gill index build --checkpoint C (or build_bank)",
        )
    return embeddings, keys, index


def _banks(banks: Path) -> list[dict[str, Any]]:
    """Manifests of every bank in the folder of banks ``banks``."""
    return [m for p in _subfolders(banks) if (m := _read_manifest(p)) is not None]


def _bank_path(path: Path, manifest: dict[str, Any], stored: str) -> Path:
    """A path the manifest of the bank at ``path`` records, on this machine."""
    root = manifest.get("root")
    return resolve_stored(stored, (path / root).resolve() if root is not None else None)


def _subfolders(folder: Path) -> list[Path]:
    """Sorted sub-folders of ``folder``, without hidden ones (temporary folders of atomic writes)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


__all__ = [
    "AUTO_APPROXIMATE_MIN_ROWS",
    "ApproximateIndex",
    "BankInfo",
    "BankShard",
    "Hit",
    "RetrievalBank",
    "bank_dir",
    "build_bank",
    "checkpoint_id",
    "default_nlist",
    "default_nprobe",
    "exact_search",
    "project_images",
]
