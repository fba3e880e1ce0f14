"""The training reader: aligned (caption, CLIP feature, SD target) batches for GILL's adapters.

GILL trains only its adapters (paper section 3), so a training example needs no pixels: the caption (from the
feature shard's ``keys.json``), the frozen vision feature (``vision.npy``) and the frozen SD text-encoder target
(``sd_text.npy``), all written by :mod:`gill.data.precompute`. :class:`TrainingData` is a map-style
:class:`torch.utils.data.Dataset` over every (feature shard, row), with the arrays memory-mapped (opened lazily,
once per process, so DataLoader workers share the page cache).

Captions are tokenised as the official ``data.CsvDataset`` does (docs/official-gill.md §2.2):
``caption + "[IMG0]...[IMG7]"``
(no space), BOS prepended by the tokenizer, padded and truncated on the right to ``max_len`` (32); ``caption_len``
is the attention-mask sum (BOS and the [IMG] tokens included); when truncation cut the [IMG] run, the last
``n`` ids of the caption are overwritten with the [IMG] ids.

Order is a permutation of all examples seeded by ``(seed, epoch)``; ``loader(start=k)`` skips the first ``k``
examples of that order, so a resumed run sees exactly the batches an uninterrupted one would (for ``k`` a
multiple of the batch size). Unlike the official reader, nothing is skipped silently (it retried a random
index on any failure, official §2.1): every feature shard must match a complete image shard key for key, or
:class:`TrainingData` refuses to start with an :class:`~gill.errors.InputError` listing every mismatch.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gill.data.precompute import (
    FORMAT_VERSION,
    KEYS_FILE,
    SD_TEXT_FILE,
    VISION_FILE,
    output_problems,
    read_feature_manifest,
)
from gill.data.shards import WORKER_CONTEXT, SplitFolders, complete_image_shards, shard_keys
from gill.errors import ConfigError, InputError
from gill.tokenization import ImgTokens
from gill.utils.io import sha256_file
from gill.utils.process_farm import worker_context

logger = logging.getLogger(__name__)

MAX_LISTED_KEYS = 5
"""How many differing keys an alignment error lists per shard."""


# -- batches ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TrainingBatch:
    """One batch of aligned training examples (B examples, L = ``max_len``, T = 77 SD tokens).

    Attributes:
        keys: B sample keys (img2dataset keys, unique within the split).
        captions: B raw captions.
        input_ids: (B, L) int64 LM ids: BOS, caption, [IMG0..n-1], right padding.
        attention_mask: (B, L) int64, 1 on BOS, caption and [IMG] tokens.
        caption_len: (B,) int64 real tokens per row (BOS and the [IMG] tokens included); the [IMG] tokens sit at
            ``caption_len - n .. caption_len - 1``.
        vision_features: (B, Dv) float32 frozen CLIP ``pooler_output``.
        sd_targets: (B, T, Dt) float32 frozen SD text-encoder ``last_hidden_state`` of the caption.
    """

    keys: list[str]
    captions: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    caption_len: torch.Tensor
    vision_features: torch.Tensor
    sd_targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(kw_only=True)
class TokenizedCaptions:
    """LM inputs of a list of captions with their [IMG] tokens."""

    input_ids: torch.Tensor
    """(B, L) int64."""
    attention_mask: torch.Tensor
    """(B, L) int64."""
    caption_len: torch.Tensor
    """(B,) int64 attention-mask sums."""


def tokenize_captions(tokenizer: Any, captions: list[str], img_tokens: ImgTokens, max_len: int) -> TokenizedCaptions:
    """Tokenise ``caption + [IMG0]..[IMG{n-1}]`` as the official reader does (official §2.2), vectorised."""
    enc = tokenizer(
        [c + img_tokens.suffix for c in captions],
        padding="max_length",
        truncation=True,
        max_length=max_len,
        padding_side="right",
        return_tensors="pt",
    )
    input_ids = enc["input_ids"].long()  # (B, L)
    attention_mask = enc["attention_mask"].long()  # (B, L)
    caption_len = attention_mask.sum(dim=1)  # (B,)
    img = torch.tensor(img_tokens.ids, dtype=torch.long)  # (n,)
    last = input_ids.gather(1, (caption_len - 1)[:, None])[:, 0]  # (B,)
    cut = last != img[-1]  # (B,) truncation cut the [IMG] run
    if cut.any():
        positions = caption_len[cut, None] - len(img) + torch.arange(len(img))  # (b, n)
        input_ids[cut] = input_ids[cut].scatter(1, positions, img.expand(int(cut.sum()), -1))  # (b, L)
    return TokenizedCaptions(input_ids=input_ids, attention_mask=attention_mask, caption_len=caption_len)


def check_tokenizer(tokenizer: Any, img_tokens: ImgTokens, max_len: int) -> None:
    """Refuse settings under which the [IMG] run would not end each caption (one ConfigError listing all)."""
    problems = []
    n = len(img_tokens.ids)
    if max_len <= n + 1:
        problems.append(f"max_len: must leave room for BOS, a caption and {n} [IMG] tokens (> {n + 1}), got {max_len}")
    if getattr(tokenizer, "truncation_side", "right") != "right":
        problems.append(
            f"tokenizer.truncation_side: must be 'right' (the [IMG] fix assumes it), got {tokenizer.truncation_side!r}"
        )
    ids = tokenizer("a" + img_tokens.suffix)["input_ids"]
    if list(ids[-n:]) != list(img_tokens.ids):
        problems.append(
            f"tokenizer: 'a{img_tokens.suffix}' must end with the [IMG] ids {list(img_tokens.ids)}, "
            f"got {list(ids)} (does it append EOS, or were the [IMG] tokens not added?)"
        )
    if problems:
        raise ConfigError("tokenizer does not fit GILL's caption format", problems)


@dataclass(kw_only=True)
class FeatureExample:
    """One row of one feature shard (arrays in their storage dtype)."""

    key: str
    caption: str
    vision: np.ndarray
    """(Dv,)"""
    sd_text: np.ndarray
    """(T, Dt)"""


class TrainingCollate:
    """Picklable collate function: tokenise the captions, stack the features as float32."""

    def __init__(self, tokenizer: Any, img_tokens: ImgTokens, max_len: int) -> None:
        self.tokenizer, self.img_tokens, self.max_len = tokenizer, img_tokens, max_len

    def __call__(self, examples: list[FeatureExample]) -> TrainingBatch:
        captions = [e.caption for e in examples]
        tokens = tokenize_captions(self.tokenizer, captions, self.img_tokens, self.max_len)
        return TrainingBatch(
            keys=[e.key for e in examples],
            captions=captions,
            input_ids=tokens.input_ids,  # (B, L)
            attention_mask=tokens.attention_mask,  # (B, L)
            caption_len=tokens.caption_len,  # (B,)
            vision_features=torch.from_numpy(np.stack([e.vision for e in examples]).astype(np.float32)),  # (B, Dv)
            sd_targets=torch.from_numpy(np.stack([e.sd_text for e in examples]).astype(np.float32)),  # (B, T, Dt)
        )


# -- feature shards and their alignment check ---------------------------------------------------------------


@dataclass(kw_only=True)
class FeatureShard:
    """One checked feature shard."""

    name: str
    """Shard name, shared with its image shard (``00000``)."""
    folder: Path
    """The feature shard's folder (``<split features>/<name>``)."""
    keys: list[str]
    """Row order of the arrays."""
    captions: list[str]
    """Caption of each row."""
    manifest: dict[str, Any]
    """Its ``manifest.json``."""

    @property
    def count(self) -> int:
        """Rows."""
        return len(self.keys)


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return f"{keys[:MAX_LISTED_KEYS]}{more}"


def _key_problems(name: str, feature_keys: list[str], image_keys: list[str]) -> list[str]:
    if sorted(feature_keys) == sorted(image_keys):
        return []
    only_features, only_images = set(feature_keys) - set(image_keys), set(image_keys) - set(feature_keys)
    detail = [f"{len(feature_keys)} feature rows vs {len(image_keys)} images"]
    if only_features:
        detail.append(f"only in the features: {_listed(only_features)}")
    if only_images:
        detail.append(f"only in the image shard: {_listed(only_images)}")
    if not only_features and not only_images:
        counts = Counter(feature_keys) - Counter(image_keys) or Counter(image_keys) - Counter(feature_keys)
        detail.append(f"keys listed more than once: {_listed(counts)}")
    return [f"feature shard {name}: keys differ from image shard {name}.tar: " + "; ".join(detail)]


def _size_problems(name: str, folder: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Files whose size differs from the one the manifest records (a truncated or grown file): file -> problem."""
    if "files" not in manifest:  # written before sizes were recorded: the array checks below still apply
        return {}
    return {f: f"feature shard {name}: {p}" for f, p in output_problems(folder, manifest, checksums=False).items()}


def _array_problems(
    name: str, folder: Path, manifest: dict[str, Any], count: int, skip: Iterable[str] = ()
) -> list[str]:
    problems = []
    for what, file in (("vision", VISION_FILE), ("sd_text", SD_TEXT_FILE)):
        if file in skip:  # already reported as truncated or damaged
            continue
        try:
            shape = list(np.load(folder / file, mmap_mode="r").shape) if count else manifest["arrays"][what]["shape"]
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"feature shard {name}: cannot read {file} ({err})")
            continue
        if shape != manifest.get("arrays", {}).get(what, {}).get("shape") or shape[0] != count:
            problems.append(
                f"feature shard {name}: {file} has shape {shape}, manifest and keys.json say "
                f"{manifest.get('arrays', {}).get(what, {}).get('shape')} with {count} rows"
            )
    return problems


def load_feature_shard(folder: Path, image_tar: Path, *, verify: bool) -> tuple[FeatureShard | None, list[str]]:
    """Read one feature shard and check it against its image shard; returns (shard or None, problems)."""
    name = folder.name
    manifest = read_feature_manifest(folder)
    if manifest is None or manifest.get("format_version") != FORMAT_VERSION:
        return None, [f"feature shard {name}: missing, unreadable or old manifest.json (format {FORMAT_VERSION})"]
    damaged = _size_problems(name, folder, manifest)
    try:
        listing = json.loads((folder / KEYS_FILE).read_text(encoding="utf-8"))
        keys, captions = list(listing["keys"]), list(listing["captions"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, [*damaged.values(), f"feature shard {name}: cannot read {KEYS_FILE} ({err})"]
    problems = _key_problems(name, keys, shard_keys(image_tar))
    if len(captions) != len(keys) or manifest.get("count") != len(keys):
        problems.append(
            f"feature shard {name}: {len(keys)} keys, {len(captions)} captions, manifest count {manifest.get('count')}"
        )
    problems += [*damaged.values(), *_array_problems(name, folder, manifest, len(keys), skip=damaged)]
    if verify and (recorded := manifest.get("source", {}).get("sha256")) != (actual := sha256_file(image_tar)):
        problems.append(
            f"feature shard {name}: computed from a different {image_tar.name} (manifest sha256 "
            f"{str(recorded)[:12]}..., on disk {actual[:12]}...); precompute it again"
        )
    shard = FeatureShard(name=name, folder=folder, keys=keys, captions=captions, manifest=manifest)
    return (None if problems else shard), problems


def _fingerprint_problems(shards: list[FeatureShard]) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for shard in shards:
        groups[str(shard.manifest.get("encoder_fingerprint"))].append(shard.name)
    if len(groups) <= 1:
        return []
    return [
        f"encoder fingerprint {fp[:12]}... (encoders {shards_encoders(shards, names[0])}): shards {_listed(names)}"
        for fp, names in sorted(groups.items())
    ]


def shards_encoders(shards: list[FeatureShard], name: str) -> str:
    """``vision id + sd id`` of the named shard, for error messages."""
    encoders = next(s.manifest.get("encoders", {}) for s in shards if s.name == name)
    return f"{encoders.get('vision', {}).get('id')}, {encoders.get('sd_text', {}).get('id')}"


def _pairing_problems(split: SplitFolders, images: dict[str, Path], features: dict[str, Path]) -> list[str]:
    problems = [
        f"image shard {n}.tar has no feature shard (expected {split.features / n})"
        for n in sorted(set(images) - set(features))
    ]
    problems += [
        f"feature shard {n} has no complete image shard ({split.images / n}.tar with its _stats.json)"
        for n in sorted(set(features) - set(images))
    ]
    return problems


def open_feature_shards(split: SplitFolders, *, verify: bool = True) -> list[FeatureShard]:
    """Every feature shard of ``split``, checked against its complete image shards; one InputError lists all problems.

    Args:
        verify: also compare each manifest's source sha256 with the image tar on disk (reads every tar).
    """
    images = {t.stem: t for t in complete_image_shards(split.images)}
    folder = split.features
    features = (
        {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        if folder.is_dir()
        else {}
    )
    if not images:
        raise InputError(
            f"no complete image shards for split {split.name!r}",
            [f"{split.images} holds no <shard>.tar with its _stats.json"],
        )
    problems = _pairing_problems(split, images, features)
    shards = []
    for name in sorted(set(images) & set(features)):
        shard, shard_problems = load_feature_shard(features[name], images[name], verify=verify)
        problems += shard_problems
        shards += [shard] if shard is not None else []
    problems += _fingerprint_problems(shards)
    if problems:
        raise InputError(
            f"feature shards of split {split.name!r} do not match its image shards",
            problems,
            hint=f"re-run the precompute stage for split {split.name!r} (gill data precompute --split {split.name}): "
            "it recomputes stale and damaged shards",
        )
    return shards


# -- the dataset ----------------------------------------------------------------------------------------------


class TrainingData(Dataset):
    """Map-style dataset over every (feature shard, row) of a split, checked for alignment on construction."""

    def __init__(
        self, split: SplitFolders, tokenizer: Any, img_tokens: ImgTokens, max_len: int, *, verify: bool = True
    ) -> None:
        check_tokenizer(tokenizer, img_tokens, max_len)
        self.split = split.name
        self.shards = open_feature_shards(split, verify=verify)
        self.offsets = np.cumsum([0] + [s.count for s in self.shards])
        self.collate = TrainingCollate(tokenizer, img_tokens, max_len)
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        logger.info("training data %s: %d examples in %d shards", split, len(self), len(self.shards))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def encoder_fingerprint(self) -> str:
        """sha256 identifying the frozen encoders and dtypes every shard was computed with."""
        return str(self.shards[0].manifest["encoder_fingerprint"])

    @property
    def vision_dim(self) -> int:
        """Dv of ``vision_features``."""
        return int(self.shards[0].manifest["arrays"]["vision"]["shape"][1])

    @property
    def sd_target_shape(self) -> tuple[int, int]:
        """(T, Dt) of one ``sd_targets`` row."""
        _, tokens, width = self.shards[0].manifest["arrays"]["sd_text"]["shape"]
        return int(tokens), int(width)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = {}  # memory maps are reopened in each worker process
        return state

    def _shard_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._arrays:
            folder = self.shards[i].folder
            self._arrays[i] = (
                np.load(folder / VISION_FILE, mmap_mode="r"),
                np.load(folder / SD_TEXT_FILE, mmap_mode="r"),
            )
        return self._arrays[i]

    def __getitem__(self, index: int) -> FeatureExample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        row = index - int(self.offsets[shard])
        vision, sd_text = self._shard_arrays(shard)
        return FeatureExample(
            key=self.shards[shard].keys[row],
            caption=self.shards[shard].captions[row],
            vision=np.asarray(vision[row]),
            sd_text=np.asarray(sd_text[row]),
        )

    def __getitems__(self, indices: list[int]) -> list[FeatureExample]:
        """Batched fetch (DataLoader calls it with one batch's indices)."""
        return [self[int(i)] for i in indices]

    def order(self, *, seed: int, epoch: int) -> np.ndarray:
        """The permutation of all example indices for ``(seed, epoch)`` (independent of global RNG state)."""
        if seed < 0 or epoch < 0:
            raise ConfigError("invalid loader order", [f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}"])
        return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(len(self))

    def batch_indices(
        self, batch_size: int, *, seed: int, epoch: int = 0, start: int = 0, drop_last: bool = True
    ) -> list[list[int]]:
        """The batches (lists of example indices) of one epoch, after skipping its first ``start`` examples."""
        problems = []
        if batch_size <= 0:
            problems.append(f"batch_size: must be > 0, got {batch_size}")
        if not 0 <= start <= len(self):
            problems.append(f"start: must be in [0, {len(self)}] (examples already consumed this epoch), got {start}")
        if problems:
            raise ConfigError("invalid loader arguments", problems)
        rest = self.order(seed=seed, epoch=epoch)[start:].tolist()
        batches = [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]
        return [b for b in batches if len(b) == batch_size] if drop_last else batches

    def loader(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        start: int = 0,
        num_workers: int = 0,
        drop_last: bool = True,
    ) -> DataLoader:
        """A DataLoader of :class:`TrainingBatch` in the ``(seed, epoch)`` order, resuming after ``start`` examples.

        Resuming at ``start=k`` (``k`` a multiple of ``batch_size``) yields exactly the batches an uninterrupted run
        yields after its first ``k`` examples; any other ``k`` still covers each remaining example once.
        """
        batches = self.batch_indices(batch_size, seed=seed, epoch=epoch, start=start, drop_last=drop_last)
        context = worker_context(WORKER_CONTEXT, preload=(__name__,)) if num_workers > 0 else None
        return DataLoader(
            self,
            batch_sampler=batches,
            collate_fn=self.collate,
            num_workers=num_workers,
            multiprocessing_context=context,
        )
