"""Test helper: the synthetic world's CC3M pairs as image-shard samples, without running the downloader."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from gill.data.shards import ShardSample


def world_samples(world, per_shard: int, split: str = "train") -> list[ShardSample]:
    """The world's CC3M pairs of ``split`` as img2dataset samples (key = 5-digit shard id + 4-digit index)."""
    tsv = world.cc3m_train_tsv if split == "train" else world.cc3m_val_tsv
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()]
    return [
        ShardSample(
            key=f"{i // per_shard:05d}{i % per_shard:04d}",
            caption=caption,
            jpeg=Path(unquote(urlparse(url).path)).read_bytes(),
            meta={"url": url},
        )
        for i, (caption, url) in enumerate(rows)
    ]
