"""The retrieval bank: rows from a checkpoint's image_proj, exact and FAISS search, local images, safe rebuilds.

GILL paper section 3.2 (retrieval) and docs/official-gill.md §4.1 / 4.4 (the official bank and how it is searched).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from shard_helpers import bank_in, split_folders, world_samples

import gill.retrieval as retrieval
from flows.workdir import Workdir
from gill.adapters import build_adapters
from gill.checkpoint import load_adapters, save_pretrained
from gill.data.precompute import PrecomputeOptions, precompute_split
from gill.data.shards import index_shard, read_samples, write_image_shard
from gill.errors import InputError
from gill.factory import derive_dims, load_backbones
from gill.retrieval import (
    ApproximateIndex,
    RetrievalBank,
    bank_dir,
    build_bank,
    checkpoint_id,
    default_nlist,
    exact_search,
)
from gill.tokenization import add_img_tokens

PER_SHARD = 8


def make_checkpoint(config, out: Path, seed: int) -> Path:
    """Randomly initialised adapters of ``config`` saved as a checkpoint (no training needed for a bank)."""
    torch.manual_seed(seed)
    adapters = build_adapters(config, derive_dims(config))
    tokenizer = load_backbones(config, roles=("lm",)).tokenizer
    return save_pretrained(out, adapters, config, add_img_tokens(tokenizer, config.adapters.num_img_tokens))


def write_precomputed(root: Path, world, config, *, swap_first_shard: bool = False) -> None:
    """The world's 16 training pairs as two image shards of 8, with precomputed features."""
    samples = world_samples(world, PER_SHARD)
    if swap_first_shard:  # same keys, other images: the features (and their fingerprint) change
        images = [s.jpeg for s in samples[:PER_SHARD]]
        for sample, jpeg in zip(samples[:PER_SHARD], images[1:] + images[:1], strict=True):
            sample.jpeg = jpeg
    for shard in range(2):
        tar = split_folders("train", root).images / f"{shard:05d}.tar"
        write_image_shard(tar, samples[shard * PER_SHARD : (shard + 1) * PER_SHARD])
    precompute_split(split_folders("train", root), config, PrecomputeOptions(batch_size=8), progress=False)


@pytest.fixture(scope="module")
def world_dir(tiny_config, small_world, tmp_path_factory) -> Path:
    """A workdir with two precomputed image shards (16 samples) and one checkpoint, bank not built."""
    root = tmp_path_factory.mktemp("retrieval-work")
    write_precomputed(root, small_world, tiny_config)
    make_checkpoint(tiny_config, root / "ckpt-a", seed=0)
    return root


@pytest.fixture(scope="module")
def bank(world_dir) -> RetrievalBank:
    """The exact bank of ``ckpt-a``."""
    bank_in(world_dir, world_dir / "ckpt-a", progress=False)
    return RetrievalBank.open(Workdir(Path(world_dir)).banks, world_dir / "ckpt-a")


@pytest.fixture
def workdir_copy(world_dir, bank, tmp_path) -> Path:
    """A private copy of the workdir (with the built bank) for tests that change it."""
    return Path(shutil.copytree(world_dir, tmp_path / "work"))


def shard_samples(workdir: Path) -> dict[str, object]:
    """Every stored sample of the train image shards, by key."""
    out = {}
    for tar in sorted(split_folders("train", workdir).images.glob("*.tar")):
        index = index_shard(tar)
        out.update({s.key: s for s in read_samples(index, index.image_keys)})
    return out


# -- building -----------------------------------------------------------------------------------------------------


def test_the_bank_has_one_row_per_precomputed_sample_each_the_normalised_image_proj_of_its_feature(world_dir, bank):
    samples = shard_samples(world_dir)
    assert bank.count == len(samples) == 16
    assert sorted(bank.keys) == sorted(samples)
    assert bank.path == bank_dir(Workdir(Path(world_dir)).banks, world_dir / "ckpt-a")
    assert bank.checkpoint_id == checkpoint_id(world_dir / "ckpt-a") == bank.path.name
    heads = load_adapters(world_dir / "ckpt-a").adapters.retrieval
    expected = []
    for shard in ("00000", "00001"):
        folder = split_folders("train", world_dir).features / shard
        keys = json.loads((folder / "keys.json").read_text())["keys"]
        vision = torch.from_numpy(np.load(folder / "vision.npy").astype(np.float32))
        with torch.no_grad():
            expected += list(zip(keys, F.normalize(heads.image_proj(vision), dim=-1).numpy(), strict=True))
    assert [k for k, _ in expected] == bank.keys
    np.testing.assert_allclose(np.asarray(bank.embeddings), np.stack([e for _, e in expected]), rtol=1e-5, atol=1e-6)
    assert bank.logit_scale == pytest.approx(heads.scale().item())
    assert bank.dim == heads.image_proj.out_features and not bank.has_index
    assert {h.split for h in bank.search(np.asarray(bank.embeddings), k=1)[0]} == {"train"}


def test_searching_with_a_rows_own_embedding_returns_that_row_first_with_cosine_one(bank):
    embeddings = np.asarray(bank.embeddings)
    assert len(np.unique(embeddings.round(5), axis=0)) == bank.count  # distinct rows, so top-1 is unambiguous
    results = bank.search(torch.from_numpy(embeddings * 3.0), k=4)  # queries are normalised by the bank
    for row, hits in enumerate(results):
        assert hits[0].row == row and hits[0].key == bank.keys[row]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and len(hits) == 4
        assert all(h.scaled_score == pytest.approx(h.score * bank.logit_scale) for h in hits)
        assert hits[0].shard == f"data/cc3m/train/{bank.keys[row][:5]}.tar"


def test_the_image_and_caption_of_a_hit_are_read_from_the_local_shard(world_dir, bank):
    samples = shard_samples(world_dir)
    for hit in bank.search(np.asarray(bank.embeddings)[[0, 9, 15]], k=1):
        stored = samples[hit[0].key]
        assert bank.sample(hit[0]).jpeg == stored.jpeg
        image = bank.image(hit[0])
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(stored.jpeg)).convert("RGB")))
        assert bank.caption(hit[0]) == stored.caption


def test_excluded_rows_are_never_returned_and_the_next_best_take_their_place(bank):
    query = np.asarray(bank.embeddings)[3]
    (full,) = bank.search(query, k=6)
    (rest,) = bank.search(query, k=5, exclude_rows=[{full[0].row, full[2].row}])
    assert [h.row for h in rest] == [full[i].row for i in (1, 3, 4, 5)] + [rest[-1].row]
    assert {full[0].row, full[2].row}.isdisjoint(h.row for h in rest)
    keep = {0, 7}
    (few,) = bank.search(query, k=5, exclude_rows=[set(range(bank.count)) - keep])
    assert {h.row for h in few} == keep  # fewer than k left: only those come back
    both = bank.search(np.stack([query, query]), k=1, exclude_rows=[None, [full[0].row]])
    assert both[0][0].row == full[0].row and both[1][0].row == full[1].row


def test_exact_search_matches_a_full_sort_across_chunks_with_exclusions(monkeypatch):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((101, 8)).astype(np.float32)
    rows[50] = rows[10]  # an exact tie: the lower row wins
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    queries[2] = rows[10]
    exclude = [np.array([5, 60]), np.array([], np.int64), np.array([99])]
    monkeypatch.setattr(retrieval, "EXACT_CHUNK_ROWS", 7)
    scores, found = exact_search(rows, queries, 10, exclude)
    full = queries @ rows.T
    for q in range(3):
        full[q, exclude[q]] = -np.inf
        order = np.lexsort((np.arange(101), -full[q]))[:10]
        assert found[q].tolist() == order.tolist()
        np.testing.assert_allclose(scores[q], full[q, order], rtol=1e-6)
    assert found[2][:2].tolist() == [10, 50]
    assert exact_search(rows, queries, 500)[1].shape == (3, 101)


# -- approximate search -------------------------------------------------------------------------------------------


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    x = centers[rng.integers(clusters, size=n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_approximate_index_finds_the_exact_neighbours_of_held_out_queries_and_survives_a_round_trip(tmp_path):
    data = clustered(6000, 32, 60, seed=1)
    rows, queries = data[:5000], data[5000:5100]
    index = ApproximateIndex.build(rows, nprobe=16)
    assert index.count == 5000 and index.nlist == default_nlist(5000) == 128
    _, exact = exact_search(rows, queries, 10)
    scores, approx = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9, recall
    _, one_probe = index.search(queries, 10, nprobe=1)
    one_probe_recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(one_probe, exact, strict=True)])
    assert one_probe_recall < recall  # nprobe really limits the scan
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ rows.T, approx, 1), rtol=1e-5)  # exact scores
    loaded = ApproximateIndex.load(index.save(tmp_path / "ivf.faiss"), nprobe=16)
    assert np.array_equal(loaded.search(queries, 10)[1], approx)
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_an_approximate_bank_agrees_with_exact_search(workdir_copy):
    info = bank_in(workdir_copy, workdir_copy / "ckpt-a", approximate=True, nlist=4, progress=False)
    assert info.approximate and not info.skipped and (info.path / "ivf.faiss").is_file()
    bank = RetrievalBank.open(Workdir(Path(workdir_copy)).banks, workdir_copy / "ckpt-a")
    assert bank.has_index and bank.index.nlist == 4
    embeddings = np.asarray(bank.embeddings)
    one_probe = bank.search(embeddings, k=1, method="approx", nprobe=1)  # a row lies in its own nearest list
    assert [hits[0].row for hits in one_probe] == list(range(bank.count))
    queries = np.random.default_rng(0).standard_normal((8, bank.dim)).astype(np.float32)
    exact = bank.search(queries, k=5, method="exact", exclude_rows=[{1}] * 8)
    approx = bank.search(queries, k=5, method="approx", exclude_rows=[{1}] * 8)  # nprobe 64 >= nlist: every list
    assert [[h.row for h in hits] for hits in approx] == [[h.row for h in hits] for hits in exact]
    assert all(h.row != 1 for hits in approx for h in hits)
    np.testing.assert_allclose(
        [h.score for hits in approx for h in hits], [h.score for hits in exact for h in hits], rtol=1e-5, atol=1e-6
    )  # faiss and numpy sum in different orders


def test_approximate_search_on_an_exact_bank_and_bad_queries_are_refused(bank):
    with pytest.raises(InputError, match="no approximate index"):
        bank.search(np.asarray(bank.embeddings)[:1], method="approx")
    with pytest.raises(InputError) as err:
        bank.search(np.zeros((2, bank.dim + 1), np.float32))
    assert f"(B, {bank.dim})" in str(err.value)
    with pytest.raises(InputError, match="NaN"):
        bank.search(np.full((1, bank.dim), np.nan, np.float32))
    with pytest.raises(InputError, match="one iterable of rows per query"):
        bank.search(np.asarray(bank.embeddings)[:2], exclude_rows=[{0}])


# -- identity, errors and rebuilds ----------------------------------------------------------------------------


def test_a_bank_built_by_another_checkpoint_is_refused_naming_both(world_dir, bank, tiny_config, tmp_path):
    other = make_checkpoint(tiny_config, tmp_path / "ckpt-b", seed=1)
    ours, theirs = checkpoint_id(world_dir / "ckpt-a"), checkpoint_id(other)
    assert ours != theirs
    with pytest.raises(InputError) as err:
        RetrievalBank.load(bank.path, theirs, checkpoint_dir=other)
    message = str(err.value)
    assert ours in message and theirs in message and "gill index build" in message and str(other) in message
    with pytest.raises(InputError) as err:
        RetrievalBank.open(Workdir(Path(world_dir)).banks, other)
    message = str(err.value)
    assert ours in message and theirs in message and f"--checkpoint {other}" in message


def test_a_checkpoint_with_a_flipped_byte_is_reported_corrupted_not_as_another_checkpoint(world_dir, bank, tmp_path):
    damaged = Path(shutil.copytree(world_dir / "ckpt-a", tmp_path / "ckpt-a"))
    data = bytearray((damaged / "adapters.safetensors").read_bytes())
    data[-1] ^= 0x01  # a tensor byte: the file still parses, its hash (the checkpoint id) changes
    (damaged / "adapters.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        RetrievalBank.open(Workdir(Path(world_dir)).banks, damaged)
    message = err.value.render()
    assert message.startswith(f"checkpoint corrupted: '{damaged / 'adapters.safetensors'}'")
    assert "another checkpoint" not in message and "no retrieval bank" not in message


def test_missing_features_and_a_missing_checkpoint_are_reported_together(tmp_path):
    with pytest.raises(InputError) as err:
        splits = [split_folders("train", tmp_path), split_folders("val", tmp_path)]
        build_bank(splits, tmp_path / "no-such-ckpt", tmp_path / "index" / "bank", progress=False)
    message = str(err.value)
    assert "no-such-ckpt" in message and "split 'train'" in message and "split 'val'" in message
    assert "gill data precompute" in message and "gill train" in message
    assert not (tmp_path / "index").exists()
    with pytest.raises(InputError, match="not a gill checkpoint"):
        RetrievalBank.open(Workdir(Path(tmp_path)).banks, tmp_path / "no-such-ckpt")


def test_no_bank_yet_is_an_error_that_says_how_to_build_it(world_dir, tiny_config, tmp_path):
    fresh = make_checkpoint(tiny_config, tmp_path / "ckpt-c", seed=2)
    with pytest.raises(InputError) as err:
        RetrievalBank.open(Workdir(Path(world_dir)).banks, fresh)
    assert f"gill index build --checkpoint {fresh}" in str(err.value)


def test_an_up_to_date_bank_is_kept_and_changed_features_are_rebuilt(workdir_copy, small_world, tiny_config):
    ckpt = workdir_copy / "ckpt-a"
    embeddings = bank_dir(Workdir(Path(workdir_copy)).banks, ckpt) / "embeddings.npy"
    before, mtime = np.load(embeddings), embeddings.stat().st_mtime_ns
    again = bank_in(workdir_copy, ckpt, progress=False)
    assert again.skipped and again.count == 16 and embeddings.stat().st_mtime_ns == mtime
    write_precomputed(workdir_copy, small_world, tiny_config, swap_first_shard=True)  # shard 00000 recomputed
    rebuilt = bank_in(workdir_copy, ckpt, progress=False)
    assert not rebuilt.skipped and rebuilt.count == 16
    after = np.load(embeddings)
    assert np.allclose(after[PER_SHARD:], before[PER_SHARD:])  # shard 00001 unchanged
    np.testing.assert_allclose(after[:PER_SHARD], np.roll(before[:PER_SHARD], -1, axis=0), atol=1e-4)  # fp16 features
    assert not bank_in(workdir_copy, ckpt, approximate=True, nlist=2, progress=False).skipped  # setting changed


def test_a_crash_while_writing_leaves_the_previous_bank_or_none(workdir_copy, monkeypatch):
    ckpt = workdir_copy / "ckpt-a"
    path = bank_dir(Workdir(Path(workdir_copy)).banks, ckpt)
    before = np.load(path / "embeddings.npy")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(retrieval, "_bank_manifest", crash)  # after embeddings and rows were written
    with pytest.raises(RuntimeError, match="disk full"):
        bank_in(workdir_copy, ckpt, approximate=True, progress=False)  # a rebuild: the setting changed
    assert np.array_equal(np.load(path / "embeddings.npy"), before)
    assert not RetrievalBank.open(Workdir(Path(workdir_copy)).banks, ckpt).has_index
    shutil.rmtree(path)
    with pytest.raises(RuntimeError, match="disk full"):
        bank_in(workdir_copy, ckpt, progress=False)
    assert sorted(p.name for p in (workdir_copy / "index").iterdir()) == []  # no partial bank, no temp folder


def test_a_saved_index_gets_the_mode_a_plain_open_gives_under_the_umask(tmp_path):
    """Issue 16.18: files written through a private temporary name must not stay 0600 (a server reading the bank, or
    a teammate, would be refused)."""
    import os

    index = ApproximateIndex.build(clustered(400, 8, 4, seed=2), nlist=4)
    umask = os.umask(0o027)
    try:
        path = index.save(tmp_path / "ivf.faiss")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640
