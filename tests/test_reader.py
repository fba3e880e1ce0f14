"""Training reader: aligned batches, the official caption format, resumable order, refusal of misaligned shards."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from shard_helpers import split_folders, world_samples

from gill.data.precompute import PrecomputeOptions, load_encoders, precompute_shard, precompute_split
from gill.data.reader import TrainingBatch, TrainingData, tokenize_captions
from gill.data.shards import ShardSample, write_image_shard
from gill.errors import ConfigError, InputError
from gill.hub import resolve_model_id
from gill.tokenization import ImgTokens, add_img_tokens

PER_SHARD = 6
MAX_LEN = 32


@dataclass
class World:
    workdir: Path
    samples: list[ShardSample]
    tokenizer: Any
    img_tokens: ImgTokens

    def data(self, workdir: Path | None = None, **kw: Any) -> TrainingData:
        return TrainingData(
            split_folders("train", workdir or self.workdir), self.tokenizer, self.img_tokens, MAX_LEN, **kw
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_world, tiny_config) -> World:
    from transformers import AutoTokenizer

    workdir = tmp_path_factory.mktemp("reader")
    samples = world_samples(small_world, PER_SHARD)
    for shard in range(3):
        chunk = samples[shard * PER_SHARD : (shard + 1) * PER_SHARD]
        random.Random(shard).shuffle(chunk)
        write_image_shard(split_folders("train", workdir).images / f"{shard:05d}.tar", chunk)
    precompute_split(split_folders("train", workdir), tiny_config, PrecomputeOptions(batch_size=8), progress=False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_id(tiny_config.backbones.lm.id))  # not the LM itself
    return World(workdir=workdir, samples=samples, tokenizer=tokenizer, img_tokens=add_img_tokens(tokenizer, 8))


@pytest.fixture(scope="module")
def data(world) -> TrainingData:
    return world.data()


def copy_workdir(world: World, tmp_path: Path) -> Path:
    shutil.copytree(world.workdir, tmp_path / "work")
    return tmp_path / "work"


def all_keys(batches) -> list[list[str]]:
    return [b.keys for b in batches]


def test_batches_have_named_fields_with_the_documented_shapes_and_dtypes(data):
    assert len(data) == 16 and data.vision_dim == 48 and data.sd_target_shape == (77, 32)
    assert len(data.encoder_fingerprint) == 64
    batch = next(iter(data.loader(4, seed=0)))
    assert isinstance(batch, TrainingBatch) and len(batch) == 4 and len(batch.captions) == 4
    assert batch.input_ids.shape == batch.attention_mask.shape == (4, MAX_LEN)
    assert batch.input_ids.dtype == batch.attention_mask.dtype == batch.caption_len.dtype == torch.long
    assert batch.caption_len.shape == (4,)
    assert batch.vision_features.shape == (4, 48) and batch.vision_features.dtype == torch.float32
    assert batch.sd_targets.shape == (4, 77, 32) and batch.sd_targets.dtype == torch.float32


def test_features_and_captions_stay_aligned_with_their_keys(world, data):
    by_key = {s.key: s for s in world.samples}
    for batch in data.loader(5, seed=1, drop_last=False):
        for i, key in enumerate(batch.keys):
            shard = split_folders("train", world.workdir).features / key[:5]
            row = json.loads((shard / "keys.json").read_text())["keys"].index(key)
            assert batch.captions[i] == by_key[key].caption
            assert torch.equal(
                batch.vision_features[i], torch.from_numpy(np.load(shard / "vision.npy")[row].astype(np.float32))
            )
            assert torch.equal(
                batch.sd_targets[i], torch.from_numpy(np.load(shard / "sd_text.npy")[row].astype(np.float32))
            )


def test_img_tokens_end_each_caption_after_bos_first(world, data):
    img = torch.tensor(world.img_tokens.ids)
    for batch in data.loader(8, seed=0):
        assert (batch.input_ids[:, 0] == world.tokenizer.bos_token_id).all()
        assert torch.equal(batch.caption_len, batch.attention_mask.sum(1))
        for ids, n in zip(batch.input_ids, batch.caption_len.tolist(), strict=True):
            assert torch.equal(ids[n - 8 : n], img)
            assert (ids[n:] == world.tokenizer.pad_token_id).all()
            assert not torch.isin(ids[: n - 8], img).any()


def test_truncation_overwrites_the_last_ids_with_the_img_run(world):
    long = "a large red circle on a blue square " * 12
    tokens = tokenize_captions(world.tokenizer, [long, "a small dot"], world.img_tokens, MAX_LEN)
    assert tokens.caption_len.tolist()[0] == MAX_LEN
    assert tokens.input_ids[0, -8:].tolist() == list(world.img_tokens.ids)
    assert tokens.input_ids[0, 0] == world.tokenizer.bos_token_id
    plain = world.tokenizer(long, add_special_tokens=True).input_ids
    assert tokens.input_ids[0, : MAX_LEN - 8].tolist() == plain[: MAX_LEN - 8]  # the caption part is unchanged
    n = int(tokens.caption_len[1])
    assert n < MAX_LEN and tokens.input_ids[1, n - 8 : n].tolist() == list(world.img_tokens.ids)


def test_order_is_fixed_by_seed_and_epoch_and_covers_each_example_once(data):
    first = all_keys(data.loader(4, seed=7, epoch=0))
    assert first == all_keys(data.loader(4, seed=7, epoch=0))
    assert first != all_keys(data.loader(4, seed=7, epoch=1))
    assert first != all_keys(data.loader(4, seed=8, epoch=0))
    assert sorted(k for keys in first for k in keys) == sorted({k for b in data.shards for k in b.keys})


def test_resuming_at_start_yields_the_tail_of_an_uninterrupted_run(data):
    full = list(data.loader(3, seed=5, epoch=2))
    resumed = list(data.loader(3, seed=5, epoch=2, start=6))
    assert all_keys(resumed) == all_keys(full[2:])
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(resumed, full[2:], strict=True))
    assert all_keys(data.loader(3, seed=5, epoch=2, start=len(data))) == []
    with pytest.raises(ConfigError, match="start"):
        data.loader(3, seed=5, start=len(data) + 1)


def test_two_workers_give_the_same_batches_as_none(data):
    serial = list(data.loader(4, seed=3, drop_last=False))
    parallel = list(data.loader(4, seed=3, drop_last=False, num_workers=2))
    assert all_keys(serial) == all_keys(parallel)
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.sd_targets, b.sd_targets)
        assert torch.equal(a.vision_features, b.vision_features)


def test_drop_last_decides_the_short_final_batch(data):
    assert [len(b) for b in data.loader(5, seed=0)] == [5, 5, 5]
    assert [len(b) for b in data.loader(5, seed=0, drop_last=False)] == [5, 5, 5, 1]


def test_feature_keys_that_differ_from_the_image_shard_are_refused(world, tmp_path):
    workdir = copy_workdir(world, tmp_path)
    listing_file = split_folders("train", workdir).features / "00001" / "keys.json"
    listing = json.loads(listing_file.read_text())
    listing["keys"][2] = "000019999"
    listing_file.write_text(json.dumps(listing))
    with pytest.raises(InputError) as err:
        world.data(workdir, verify=False)
    assert "feature shard 00001" in str(err.value) and "000019999" in str(err.value) and "000010002" in str(err.value)


@pytest.mark.parametrize("change", ["truncate", "grow"])
def test_a_truncated_or_grown_feature_file_is_refused_naming_shard_and_file_until_precompute_repairs_it(
    world, tiny_config, tmp_path, change
):
    workdir = copy_workdir(world, tmp_path)
    path = split_folders("train", workdir).features / "00001" / "sd_text.npy"
    if change == "truncate":
        os.truncate(path, 5000)  # truncate -s 5000
    else:
        with open(path, "ab") as handle:  # np.load reads the header's shape and would not notice
            handle.write(bytes(64))
    with pytest.raises(InputError) as err:
        world.data(workdir, verify=False)
    message = err.value.render()
    assert "feature shard 00001: sd_text.npy is " in message and str(path) in message
    assert "gill data precompute --split train" in message
    results = precompute_split(
        split_folders("train", workdir), tiny_config, PrecomputeOptions(batch_size=8), progress=False
    )
    assert [r.skipped for r in results] == [True, False, True]
    assert len(world.data(workdir)) == 16


def test_missing_feature_shard_is_refused(world, tmp_path):
    workdir = copy_workdir(world, tmp_path)
    shutil.rmtree(split_folders("train", workdir).features / "00002")
    with pytest.raises(InputError, match=r"image shard 00002\.tar has no feature shard"):
        world.data(workdir)


def test_feature_shard_without_complete_image_shard_is_refused(world, tmp_path):
    workdir = copy_workdir(world, tmp_path)
    (split_folders("train", workdir).images / "00002_stats.json").unlink()
    with pytest.raises(InputError, match="feature shard 00002 has no complete image shard"):
        world.data(workdir)


def test_tampered_image_shard_is_refused_when_verifying(world, tmp_path):
    workdir = copy_workdir(world, tmp_path)
    samples = [s for s in world.samples if s.key.startswith("00000")]
    samples[0] = ShardSample(key=samples[0].key, caption="another caption", jpeg=samples[0].jpeg, meta={})
    write_image_shard(split_folders("train", workdir).images / "00000.tar", samples)
    with pytest.raises(InputError, match=r"feature shard 00000: computed from a different 00000\.tar"):
        world.data(workdir)
    assert len(world.data(workdir, verify=False)) == 16  # same keys: only the hash check sees it


def test_feature_shards_from_different_encoders_are_refused(world, tiny_config, tmp_path):
    workdir = copy_workdir(world, tmp_path)
    options = PrecomputeOptions(dtype="fp32")
    tar = split_folders("train", workdir).images / "00001.tar"
    precompute_shard(tar, split_folders("train", workdir), load_encoders(tiny_config, options), options)
    with pytest.raises(InputError, match="encoder fingerprint") as err:
        world.data(workdir)
    assert "00001" in str(err.value)


def test_tokenizer_that_cannot_hold_the_img_run_is_refused(world):
    with pytest.raises(ConfigError, match="max_len"):
        TrainingData(split_folders("train", world.workdir), world.tokenizer, world.img_tokens, 9)
