"""Precompute stage: stored targets equal a direct forward, resume by fingerprint, atomic shards (paper section 3)."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shard_helpers import killed_python, split_folders, world_samples

from gill.data.precompute import (
    FrozenEncoders,
    PrecomputeOptions,
    ShardBatches,
    ShardResult,
    load_encoders,
    output_problems,
    precompute_shard,
    precompute_split,
    read_feature_manifest,
    sd_input_ids,
)
from gill.data.shards import ShardSample, complete_image_shards, write_image_shard
from gill.errors import ConfigError, InputError

PER_SHARD = 6
FP16_RTOL = 2.0**-10
"""fp16 keeps 11 significant bits: rounding a float32 to it moves it by at most 2**-11 of its magnitude. Twice
that covers the rounding plus float32 noise between batch sizes; atol covers fp16's subnormal range."""
FP16_ATOL = 1e-5


def write_world_shards(workdir: Path, samples: list[ShardSample]) -> None:
    """Complete shards of PER_SHARD samples in shuffled member order, plus one incomplete shard (no _stats.json)."""
    split_dir = split_folders("train", workdir).images
    for shard in range((len(samples) + PER_SHARD - 1) // PER_SHARD):
        chunk = samples[shard * PER_SHARD : (shard + 1) * PER_SHARD]
        random.Random(shard).shuffle(chunk)
        write_image_shard(split_dir / f"{shard:05d}.tar", chunk)
    extra = [ShardSample(key=f"99999{i:04d}", caption="unfinished", jpeg=samples[i].jpeg, meta={}) for i in range(2)]
    write_image_shard(split_dir / "99999.tar", extra, complete=False)


@dataclass
class Precomputed:
    workdir: Path
    samples: dict[str, ShardSample]
    results: list[ShardResult]


@pytest.fixture(scope="module")
def precomputed(tmp_path_factory, small_world, tiny_config) -> Precomputed:
    workdir = tmp_path_factory.mktemp("precompute")
    samples = world_samples(small_world, PER_SHARD)
    write_world_shards(workdir, samples)
    results = precompute_split(
        split_folders("train", workdir), tiny_config, PrecomputeOptions(batch_size=4), progress=False
    )
    return Precomputed(workdir=workdir, samples={s.key: s for s in samples}, results=results)


def copy_workdir(precomputed: Precomputed, tmp_path: Path) -> Path:
    target = tmp_path / "work"
    shutil.copytree(precomputed.workdir, target)
    return target


def shard_listing(workdir: Path, shard: str) -> dict:
    return json.loads((split_folders("train", workdir).features / shard / "keys.json").read_text())


def test_storage_conversion_has_numpys_bits_and_refuses_overflow():
    from gill.data.precompute import _to_storage

    values = torch.randn(4, 77, 32, generator=torch.Generator().manual_seed(0)) * 300
    for dtype in (np.dtype("float16"), np.dtype("float32")):
        stored = _to_storage(values, dtype, "00007", "sd_text")
        assert stored.dtype == dtype and stored.tobytes() == values.numpy().astype(dtype).tobytes()
    assert _to_storage(values.to(torch.bfloat16), np.dtype("float16"), "00007", "vision").dtype == np.float16
    with pytest.raises(InputError, match=r"feature shard 00007: vision has non-finite values in storage dtype float16"):
        _to_storage(torch.tensor([[1.0, 7e4]]), np.dtype("float16"), "00007", "vision")


def test_caption_ids_equal_the_tokenizers_own_tensors(tiny_config):
    from gill.factory import load_sd_text_encoder

    tokenizer = load_sd_text_encoder(tiny_config).tokenizer
    captions = ["a red circle", "", " ".join(["blue square"] * 60), "émoji ✓ and UPPER case"]  # the third truncates
    want = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    got = sd_input_ids(tokenizer, captions)
    assert got.dtype == want.dtype == torch.long and got.shape == (4, 77)
    assert torch.equal(got, want)


def test_features_equal_a_direct_forward_of_the_frozen_encoders(precomputed, tiny_config):
    from gill.factory import load_backbones, load_sd_text_encoder

    vision = load_backbones(tiny_config, roles=("vision",))
    sd = load_sd_text_encoder(tiny_config)
    for result in precomputed.results:
        folder = split_folders("train", precomputed.workdir).features / result.shard
        keys = shard_listing(precomputed.workdir, result.shard)["keys"]
        samples = [precomputed.samples[k] for k in keys]
        images = [Image.open(io.BytesIO(s.jpeg)).convert("RGB") for s in samples]
        ids = sd.tokenizer(
            [s.caption for s in samples], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.inference_mode():
            pixels = vision.image_processor(images=images, return_tensors="pt")["pixel_values"]
            want_vision = vision.vision(pixel_values=pixels).pooler_output.numpy()  # (N, Dv)
            want_text = sd.text_encoder(input_ids=ids).last_hidden_state.numpy()  # (N, 77, Dt)
        got_vision, got_text = np.load(folder / "vision.npy"), np.load(folder / "sd_text.npy")
        assert got_vision.dtype == np.float16 and got_vision.shape == want_vision.shape
        assert got_text.dtype == np.float16 and got_text.shape == want_text.shape == (len(keys), 77, 32)
        np.testing.assert_allclose(got_vision.astype(np.float32), want_vision, rtol=FP16_RTOL, atol=FP16_ATOL)
        np.testing.assert_allclose(got_text.astype(np.float32), want_text, rtol=FP16_RTOL, atol=FP16_ATOL)


def test_rows_are_sorted_by_key_and_carry_the_shard_captions(precomputed):
    for result in precomputed.results:
        listing = shard_listing(precomputed.workdir, result.shard)
        assert listing["keys"] == sorted(listing["keys"]) and len(listing["keys"]) == result.count
        assert listing["captions"] == [precomputed.samples[k].caption for k in listing["keys"]]
    assert [r.count for r in precomputed.results] == [6, 6, 4]


def test_manifest_records_encoders_dtypes_shapes_source_and_fingerprint(precomputed, tiny_config):
    from gill.utils.io import sha256_file

    result = precomputed.results[0]
    manifest = json.loads(
        (split_folders("train", precomputed.workdir).features / result.shard / "manifest.json").read_text()
    )
    tar = split_folders("train", precomputed.workdir).images / "00000.tar"
    assert manifest["fingerprint"] == result.fingerprint and manifest["count"] == 6
    assert manifest["source"]["sha256"] == sha256_file(tar)
    assert manifest["dtype"] == {"option": "fp16", "compute": "float32", "storage": "float16"}
    assert manifest["arrays"]["vision"]["shape"] == [6, 48] and manifest["arrays"]["sd_text"]["shape"] == [6, 77, 32]
    encoders = manifest["encoders"]
    assert encoders["vision"]["id"] == tiny_config.backbones.vision.id
    assert {"config.json", "model.safetensors"} <= set(encoders["vision"]["files_sha256"])
    assert "text_encoder/config.json" in encoders["sd_text"]["files_sha256"]
    assert any(name.startswith("tokenizer/") for name in encoders["sd_text"]["files_sha256"])
    assert encoders["image_processor"]["crop_size"] == {"height": 32, "width": 32}
    assert encoders["tokenizer_max_length"] == 77
    assert len({r.fingerprint for r in precomputed.results}) == 3  # the source sha256 is part of it


def test_arrays_load_memory_mapped(precomputed):
    folder = split_folders("train", precomputed.workdir).features / "00001"
    vision = np.load(folder / "vision.npy", mmap_mode="r")
    sd_text = np.load(folder / "sd_text.npy", mmap_mode="r")
    assert isinstance(vision, np.memmap) and isinstance(sd_text, np.memmap)
    assert vision.shape == (6, 48) and sd_text.shape == (6, 77, 32) and np.isfinite(sd_text[-1]).all()


def test_incomplete_image_shard_is_ignored(precomputed):
    assert [p.name for p in complete_image_shards(split_folders("train", precomputed.workdir).images)] == [
        "00000.tar",
        "00001.tar",
        "00002.tar",
    ]
    assert [r.shard for r in precomputed.results] == ["00000", "00001", "00002"]
    assert sorted(p.name for p in split_folders("train", precomputed.workdir).features.iterdir()) == [
        "00000",
        "00001",
        "00002",
    ]


def test_rerun_skips_up_to_date_shards_without_touching_them(precomputed, tiny_config):
    folder = split_folders("train", precomputed.workdir).features
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    again = precompute_split(
        split_folders("train", precomputed.workdir), tiny_config, PrecomputeOptions(batch_size=4), progress=False
    )
    assert all(r.skipped for r in again)
    assert [(r.fingerprint, r.count, r.duration_s) for r in again] == [
        (r.fingerprint, r.count, r.duration_s) for r in precomputed.results
    ]
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_moving_the_model_folders_keeps_the_fingerprint(precomputed, tiny_config, tiny_zoo, tmp_path):
    workdir = copy_workdir(precomputed, tmp_path)
    for name in ("clip", "sd"):
        shutil.copytree(tiny_zoo / name, tmp_path / "moved" / name)
    moved = tiny_config.with_backbones(vision=str(tmp_path / "moved" / "clip"), sd=str(tmp_path / "moved" / "sd"))
    again = precompute_split(split_folders("train", workdir), moved, PrecomputeOptions(), progress=False)
    assert all(r.skipped for r in again)  # same files, same hashes: where they live does not matter


def test_other_dtype_or_changed_source_shard_recomputes(precomputed, tiny_config, tmp_path):
    workdir = copy_workdir(precomputed, tmp_path)
    fp32 = precompute_split(
        split_folders("train", workdir), tiny_config, PrecomputeOptions(dtype="fp32"), progress=False
    )
    assert not any(r.skipped for r in fp32)
    assert np.load(split_folders("train", workdir).features / "00000" / "vision.npy").dtype == np.float32
    kept = [precomputed.samples[k] for k in sorted(precomputed.samples) if k.startswith("00001")][:4]
    write_image_shard(split_folders("train", workdir).images / "00001.tar", kept)
    again = precompute_split(
        split_folders("train", workdir), tiny_config, PrecomputeOptions(dtype="fp32"), progress=False
    )
    assert [r.skipped for r in again] == [True, False, True]
    assert shard_listing(workdir, "00001")["keys"] == [s.key for s in kept]


def test_worker_processes_write_the_same_shard(precomputed, tiny_config, tmp_path):
    workdir = copy_workdir(precomputed, tmp_path)
    shutil.rmtree(split_folders("train", workdir).features)
    options = PrecomputeOptions(batch_size=4, num_workers=2)
    results = precompute_split(split_folders("train", workdir), tiny_config, options, progress=False)
    assert [r.fingerprint for r in results] == [r.fingerprint for r in precomputed.results]
    for result in results:
        for name in ("vision.npy", "sd_text.npy", "keys.json"):
            new = (split_folders("train", workdir).features / result.shard / name).read_bytes()
            assert new == (split_folders("train", precomputed.workdir).features / result.shard / name).read_bytes()


@pytest.mark.parametrize(
    "variant",
    [
        {"prefetch": 0, "batched_preprocess": False},  # inline and image by image: the stage before overlap
        {"threads": 3, "prefetch": 1, "forward_threads": 1},
        {"threads": 2, "batched_preprocess": False},
    ],
    ids=["no overlap, image by image", "3 threads, forward 1 thread", "2 threads, image by image"],
)
def test_every_preparation_path_writes_the_same_bytes(precomputed, tiny_config, tmp_path, variant):
    workdir = tmp_path / "work"
    shutil.copytree(split_folders("train", precomputed.workdir).images, split_folders("train", workdir).images)
    options = PrecomputeOptions(batch_size=4, **variant)
    results = precompute_split(split_folders("train", workdir), tiny_config, options, progress=False)
    assert [r.fingerprint for r in results] == [r.fingerprint for r in precomputed.results]  # options not in it
    for result in results:
        for name in ("vision.npy", "sd_text.npy", "keys.json"):
            new = (split_folders("train", workdir).features / result.shard / name).read_bytes()
            assert new == (split_folders("train", precomputed.workdir).features / result.shard / name).read_bytes()


def test_batch_feed_keeps_order_switches_between_inline_and_background_and_raises_at_the_failing_batch():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from gill.data.precompute import BatchFeed

    made_in = {}

    def slow_square(i: int) -> int:
        time.sleep(0.02 * ((7 * i) % 3))  # later items often finish first
        made_in[i] = threading.current_thread().name
        return i * i

    def feed(threads: int, ahead: int, make=slow_square) -> BatchFeed:
        pool = ThreadPoolExecutor(threads, thread_name_prefix="bg")
        return BatchFeed(make, 10, lambda i: pool.submit(make, i), ahead, close=lambda: pool.shutdown(wait=False))

    for threads, ahead in [(1, 1), (3, 3), (4, 6)]:
        with feed(threads, ahead) as batches:
            assert list(batches) == [i * i for i in range(10)]
    made_in.clear()
    with feed(2, 2) as batches:
        got = [batches.get(i, background=i >= 4) for i in range(10)]
    assert got == [i * i for i in range(10)]
    assert all(made_in[i] == "MainThread" for i in range(4)) and made_in[9].startswith("bg")
    assert BatchFeed(slow_square, 3).get(2, background=True) == 4  # nothing to submit to: inline

    def failing(i: int) -> int:
        if i == 4:
            raise InputError("broken item 4")
        return i

    seen = []
    with pytest.raises(InputError, match="broken item 4"), feed(2, 2, failing) as batches:
        for item in batches:
            seen.append(item)
    assert seen == [0, 1, 2, 3]

    started, lock = [], threading.Lock()

    def record(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.01)
        return i

    pool = ThreadPoolExecutor(2)
    batches = BatchFeed(record, 100, lambda i: pool.submit(record, i), 2)
    assert [batches.get(0), batches.get(1)] == [0, 1]
    batches.close()  # the consumer stops: what was not started is cancelled
    pool.shutdown(wait=True)
    assert len(started) <= 2 + 2 + 2  # two consumed, two ahead, at most two running when closed


def test_forward_threads_apply_while_shards_run_and_are_restored_after_the_last():
    from gill.data.precompute import torch_threads

    before = torch.get_num_threads()
    with torch_threads(0):
        assert torch.get_num_threads() == before
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        with torch_threads(1):  # a second shard at the same time (a flow's tasks in threads)
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # the first shard still runs
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("a failing forward")
    assert torch.get_num_threads() == before


def test_pipeline_balance_tries_inline_and_background_and_keeps_the_faster():
    from gill.data.precompute import BALANCE_MARGIN, PipelineBalance, PipelineSetting, pipeline_balance

    def run(balance: PipelineBalance, seconds: dict[bool, float], batches: int = 8) -> list[tuple[int, bool]]:
        """(threads, background) of each batch of one sample when it takes ``seconds[background]``."""
        setting, seen = balance.inline, []
        for _ in range(batches):
            seen.append((setting.threads, setting.background))
            setting = balance.observe(seconds[setting.background], 1) or setting
        return seen

    inline, background = (2, False), (1, True)
    # batch 0 (start-up) is not counted; batches 1-2 inline on all threads; 3 in the background (not counted: the
    # pipeline fills), 4-5 in the background; then the faster
    assert run(PipelineBalance(threads=2, preparers=1), {False: 1.0, True: 0.6}) == [inline] * 3 + [background] * 5
    assert run(PipelineBalance(threads=2, preparers=1), {False: 0.6, True: 1.0}) == (
        [inline] * 3 + [background] * 3 + [inline] * 2
    )
    waited = PipelineBalance(threads=2, preparers=1)  # the first batch in the background waits for workers to start
    assert [waited.observe(s, 1) for s in [9.0, 1.0, 1.0, 30.0, 0.6, 0.6]][-1] is None  # no change: kept
    assert waited.chosen == waited.background
    assert run(PipelineBalance(threads=8, preparers=3), {False: 0.5, True: 0.5})[-1] == (5, True)  # a tie
    barely = 1 - BALANCE_MARGIN / 2  # inline faster, but by less than the margin: the background kept
    assert run(PipelineBalance(threads=4, preparers=1), {False: barely, True: 1.0})[-1] == (3, True)
    assert PipelineBalance(threads=2, preparers=2).background == PipelineSetting(threads=1, background=True)
    fast = run(PipelineBalance(threads=2, preparers=1), {False: 0.02, True: 0.01}, batches=40)  # 0.3 s a setting
    assert fast == [inline] * 16 + [background] * 24  # batch 0, then 15 inline and 15 in the background

    shards = PipelineBalance(threads=2, preparers=1)  # shards of two batches: the trial goes on over shards
    ran = []
    for _ in range(6):
        shards.start_shard()  # each shard's first batch is not counted
        for _ in range(2):
            ran.append((shards.current.threads, shards.current.background))
            shards.observe(0.5 if shards.current.background else 1.0, 1)
    assert ran == [inline] * 4 + [background] * 8 and shards.chosen == shards.background

    cpu = torch.device("cpu")
    assert pipeline_balance(PrecomputeOptions(threads=2), cpu).preparers == 2
    assert pipeline_balance(PrecomputeOptions(num_workers=3), cpu).preparers == 3
    assert pipeline_balance(PrecomputeOptions(forward_threads=2), cpu) is None  # set explicitly
    assert pipeline_balance(PrecomputeOptions(prefetch=0), cpu) is None  # no overlap asked for
    assert pipeline_balance(PrecomputeOptions(), torch.device("cuda")) is None  # the forward is on the GPU


@pytest.mark.parametrize("faster", ["background", "inline"])
def test_a_shard_keeps_the_pipeline_setting_its_trial_batches_found_faster(
    precomputed, tiny_config, tmp_path, monkeypatch, faster
):
    import threading
    import time

    encoders = load_encoders(tiny_config, PrecomputeOptions())
    seen = []
    real_encode = FrozenEncoders.encode

    def encode(self, pixel_values, input_ids):
        threads = torch.get_num_threads()
        seen.append(threads)
        if faster == "background":
            time.sleep(0.3 * threads)  # contending threads: more of them, slower
        else:
            time.sleep(0.6 / threads)  # a forward that scales with its threads
        return real_encode(self, pixel_values, input_ids)

    prepared_in = []
    real_getitem = ShardBatches.__getitem__

    def getitem(self, i):
        prepared_in.append(threading.current_thread().name.startswith("precompute-prepare"))
        return real_getitem(self, i)

    monkeypatch.setattr(FrozenEncoders, "encode", encode)
    monkeypatch.setattr(ShardBatches, "__getitem__", getitem)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    images, options = split_folders("train", precomputed.workdir).images, PrecomputeOptions(batch_size=1)
    try:
        precompute_shard(images / "00000.tar", split_folders("train", tmp_path), encoders, options)
        assert torch.get_num_threads() == 2  # restored after the shard
        first, first_prepared_in, seen[:], prepared_in[:] = list(seen), list(prepared_in), [], []
        precompute_shard(images / "00001.tar", split_folders("train", tmp_path), encoders, options)
    finally:
        torch.set_num_threads(before)
    kept = 1 if faster == "background" else 2
    assert first == [2, 2, 2, 1, 1, 1]  # batch 0, inline trial (1-2), background (3 fills the pipeline, trial 4-5)
    assert first_prepared_in[:3] == [False] * 3 and all(first_prepared_in[3:6])
    assert seen == [kept] * 6  # the next shard of the same encoders: no trial
    assert all(prepared_in) if faster == "background" else not any(prepared_in)
    manifest = read_feature_manifest(split_folders("train", tmp_path).features / "00000")
    assert manifest["forward_threads"] == kept  # how it ran, recorded next to device and duration


def test_crash_mid_shard_leaves_no_feature_folder(precomputed, tiny_config, tmp_path, monkeypatch):
    workdir = copy_workdir(precomputed, tmp_path)
    folder = split_folders("train", workdir).features
    shutil.rmtree(folder / "00000")
    old_manifest = (folder / "00001" / "manifest.json").read_text()
    encoders = load_encoders(tiny_config, PrecomputeOptions())
    calls = []
    real_encode = FrozenEncoders.encode

    def crash_on_second_batch(self, pixel_values, input_ids):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_encode(self, pixel_values, input_ids)

    monkeypatch.setattr(FrozenEncoders, "encode", crash_on_second_batch)
    tars = split_folders("train", workdir).images
    with pytest.raises(RuntimeError, match="simulated crash"):
        precompute_shard(tars / "00000.tar", split_folders("train", workdir), encoders, PrecomputeOptions(batch_size=4))
    calls.clear()
    with pytest.raises(RuntimeError, match="simulated crash"):  # replacing a stale shard: the old one survives
        precompute_shard(
            tars / "00001.tar", split_folders("train", workdir), encoders, PrecomputeOptions(batch_size=4, dtype="fp32")
        )
    assert sorted(p.name for p in folder.iterdir()) == ["00001", "00002"]  # no half shard, no temp folder
    assert (folder / "00001" / "manifest.json").read_text() == old_manifest


def test_a_truncated_or_edited_feature_shard_is_recomputed_not_taken_as_up_to_date(precomputed, tiny_config, tmp_path):
    workdir = copy_workdir(precomputed, tmp_path)
    folder = split_folders("train", workdir).features
    intact = {(s, n): (folder / s / n).read_bytes() for s in ("00001", "00002") for n in ("vision.npy", "sd_text.npy")}
    manifest = read_feature_manifest(folder / "00001")
    assert manifest["files"]["sd_text.npy"]["size"] == len(intact["00001", "sd_text.npy"])
    assert len(manifest["files"]["sd_text.npy"]["sha256"]) == 64
    os.truncate(folder / "00001" / "sd_text.npy", 5000)  # truncate -s 5000
    edited = bytearray(intact["00002", "vision.npy"])
    edited[-1] ^= 0x40  # one value changed, same size
    (folder / "00002" / "vision.npy").write_bytes(bytes(edited))
    assert set(output_problems(folder / "00001", manifest)) == {"sd_text.npy"}
    again = precompute_split(
        split_folders("train", workdir), tiny_config, PrecomputeOptions(batch_size=4), progress=False
    )
    assert [r.skipped for r in again] == [True, False, False]
    assert {key: (folder / key[0] / key[1]).read_bytes() for key in intact} == intact
    assert all(
        not output_problems(folder / r.shard, read_feature_manifest(folder / r.shard), checksums=True) for r in again
    )


def test_a_changed_byte_that_kept_size_and_mtime_is_found_by_a_full_check(precomputed, tmp_path):
    workdir = copy_workdir(precomputed, tmp_path)
    shard = split_folders("train", workdir).features / "00000"
    path, stat = shard / "sd_text.npy", (shard / "sd_text.npy").stat()
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    manifest = read_feature_manifest(shard)
    assert output_problems(shard, manifest) == {}  # the documented cheap check: size and mtime
    assert "sd_text.npy does not match its sha256" in output_problems(shard, manifest, checksums=True)["sd_text.npy"]


KILLED_PRECOMPUTE = """
import os, signal, sys
from pathlib import Path
from gill.data.precompute import FrozenEncoders, PrecomputeOptions, precompute_split
from gill.data.shards import SplitFolders
from gill.presets import get_preset

FrozenEncoders.encode = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed during the first batch
root = Path(sys.argv[1])
split = SplitFolders("train", root / "data" / "cc3m" / "train", root / "features" / "cc3m" / "train")
precompute_split(split, get_preset("tiny"), PrecomputeOptions(dtype="fp32"), progress=False)
"""


def test_the_temporary_folder_of_a_killed_run_is_removed_by_the_next_and_nothing_else(
    precomputed, tiny_config, tmp_path
):
    import fcntl

    workdir = copy_workdir(precomputed, tmp_path)
    folder = split_folders("train", workdir).features
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    killed_python(KILLED_PRECOMPUTE, workdir)  # replacing shard 00000 with fp32 features
    (leftover,) = [p for p in folder.iterdir() if p.name.startswith(".")]
    assert leftover.name.startswith(".00000.") and leftover.name.endswith(".tmp") and any(leftover.iterdir())
    others = [folder / ".notes", folder / "scratch.tmp", folder / ".00001.abcdefgh.tmp.bak"]
    for other in others:
        other.mkdir()
    (folder / ".00002.abcdefgh.tmp").write_text("a file, not a folder of ours")
    in_use = folder / ".00001.inuse_01.tmp"  # a live writer's folder: it holds the folder's flock
    in_use.mkdir()
    lock = os.open(in_use, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        again = precompute_split(
            split_folders("train", workdir), tiny_config, PrecomputeOptions(batch_size=4), progress=False
        )
        assert all(r.skipped for r in again)  # the kill left the previous shards intact
        assert not leftover.exists() and in_use.is_dir()
        assert all(p.is_dir() for p in others) and (folder / ".00002.abcdefgh.tmp").is_file()
        assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == {
            **before,
            Path(".00002.abcdefgh.tmp"): b"a file, not a folder of ours",
        }
    finally:
        os.close(lock)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_undecodable_image_is_an_error_naming_shard_and_key(precomputed, tiny_config, tmp_path, num_workers):
    workdir = tmp_path / "work"
    good = list(precomputed.samples.values())[:3]
    broken = ShardSample(key="000000007", caption="a broken picture", jpeg=b"\xff\xd8 not a jpeg", meta={})
    write_image_shard(split_folders("train", workdir).images / "00000.tar", [*good, broken])
    options = PrecomputeOptions(batch_size=2, num_workers=num_workers)
    with pytest.raises(InputError, match=r"00000\.tar.*'000000007'"):
        precompute_split(split_folders("train", workdir), tiny_config, options, progress=False)
    assert not split_folders("train", workdir).features.exists() or not any(
        split_folders("train", workdir).features.iterdir()
    )


def test_split_without_complete_shards_is_an_error(tiny_config, tmp_path):
    with pytest.raises(InputError, match="no complete image shards"):
        precompute_split(split_folders("train", tmp_path), tiny_config, progress=False)


def test_options_are_validated_all_at_once():
    with pytest.raises(ConfigError) as err:
        PrecomputeOptions(batch_size=0, dtype="int8", device="tpu")  # type: ignore[arg-type]
    text = str(err.value)
    assert "batch_size" in text and "dtype" in text and "device" in text
    with pytest.raises(ConfigError) as err:
        PrecomputeOptions(
            threads=0, forward_threads=-1, num_workers=True, prefetch=1.5, batched_preprocess="yes", pin_cores=1
        )
    assert err.value.problems == [
        "prefetch: must be an int >= 0, got 1.5",
        "num_workers: must be an int >= 0, got True",
        "forward_threads: must be an int >= 0, got -1",
        "threads: must be an int >= 1, got 0",
        "batched_preprocess: must be true or false, got 'yes'",
        "pin_cores: must be true or false, got 1",
    ]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            PrecomputeOptions(device="cuda")
    assert PrecomputeOptions(dtype="bf16").storage_dtype == np.float16
    assert PrecomputeOptions(dtype="bf16").compute_dtype == torch.float32  # CPU computes fp32


def test_the_command_refuses_bad_thread_counts_naming_each(capsys, tmp_path):
    from flows.command import main

    argv = ["data", "precompute", "--split", "train", "--workdir", str(tmp_path), "--threads", "0"]
    assert main([*argv, "--forward-threads", "-2"]) == 2
    err = capsys.readouterr().err
    assert "threads: must be an int >= 1, got 0" in err and "forward_threads: must be an int >= 0, got -2" in err


def test_shard_result_row_has_the_precompute_shards_columns(precomputed):
    row = precomputed.results[0].row()
    assert list(row) == ["split", "shard", "count", "fingerprint", "duration_s", "samples_per_s"]
    assert row["split"] == "train" and row["shard"] == "00000" and row["count"] == 6 and row["samples_per_s"] > 0


def test_shard_processes_write_the_same_bytes_in_shard_order_and_skip_up_to_date_shards(
    precomputed, tiny_config, tmp_path, capsys
):
    from flows.command import main

    workdir = tmp_path / "work"
    shutil.copytree(split_folders("train", precomputed.workdir).images, split_folders("train", workdir).images)
    results = precompute_split(
        split_folders("train", workdir), tiny_config, PrecomputeOptions(batch_size=4, processes=2), progress=False
    )
    assert [r.shard for r in results] == ["00000", "00001", "00002"] and not any(r.skipped for r in results)
    assert [(r.fingerprint, r.count) for r in results] == [(r.fingerprint, r.count) for r in precomputed.results]
    for result in results:
        for name in ("vision.npy", "sd_text.npy", "keys.json"):
            new = (split_folders("train", workdir).features / result.shard / name).read_bytes()
            assert new == (split_folders("train", precomputed.workdir).features / result.shard / name).read_bytes()
        manifest = read_feature_manifest(split_folders("train", workdir).features / result.shard)
        assert manifest is not None and manifest["forward_threads"] >= 1  # each process: its share of the cores
    folder = split_folders("train", workdir).features
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    argv = ["data", "precompute", "--split", "train", "--workdir", str(workdir), "--processes", "2", "--quiet"]
    assert main(argv) == 0  # the command's --processes: the same shards, found up to date in the processes
    assert "3 shards, 16 samples: 0 computed, 3 up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_an_undecodable_image_in_a_shard_process_is_an_error_naming_shard_and_key(precomputed, tiny_config, tmp_path):
    workdir = tmp_path / "work"
    samples = [precomputed.samples[k] for k in sorted(precomputed.samples)]
    broken = ShardSample(key="000000007", caption="a broken picture", jpeg=b"\xff\xd8 not a jpeg", meta={})
    write_image_shard(split_folders("train", workdir).images / "00000.tar", [*samples[:3], broken])
    write_image_shard(split_folders("train", workdir).images / "00001.tar", samples[6:12])
    options = PrecomputeOptions(batch_size=2, processes=2)
    with pytest.raises(InputError, match=r"00000\.tar.*'000000007'") as err:
        precompute_split(split_folders("train", workdir), tiny_config, options, progress=False)
    assert err.value.problems  # the decoder's own message came back from the process with the error
    features = split_folders("train", workdir).features
    left = sorted(p.name for p in features.iterdir()) if features.exists() else []
    assert left in ([], ["00001"])  # the other shard, if it ran beside the broken one, finished whole
    if left:
        assert read_feature_manifest(features / "00001") is not None


def test_shard_processes_are_validated_naming_the_field(capsys, tmp_path):
    from flows.command import main

    for bad, device in ((0, "cpu"), (True, "cpu"), (1.5, "cpu"), (2, "cuda")):
        with pytest.raises(ConfigError) as err:
            PrecomputeOptions(processes=bad, device=device)  # type: ignore[arg-type]
        assert any(p.startswith("processes: ") and repr(bad) in p for p in err.value.problems), err.value.problems
    assert PrecomputeOptions(processes=3, device="cpu").processes == 3
    argv = ["data", "precompute", "--split", "train", "--workdir", str(tmp_path), "--processes", "0"]
    assert main(argv) == 2
    assert "processes: must be an int >= 1, got 0" in capsys.readouterr().err


def test_each_shard_process_runs_its_forward_on_its_share_of_the_cores_with_batches_prepared_inline(monkeypatch):
    import gill.data.precompute as precompute

    monkeypatch.setattr(precompute, "cores", lambda: 8)
    child = precompute.shard_process_options(PrecomputeOptions(processes=2, num_workers=3, prefetch=4, threads=2))
    assert (child.processes, child.num_workers, child.prefetch, child.forward_threads) == (1, 0, 0, 4)
    assert precompute.shard_process_options(PrecomputeOptions(processes=3)).forward_threads == 2
    monkeypatch.setattr(precompute, "cores", lambda: 2)
    assert precompute.shard_process_options(PrecomputeOptions(processes=4)).forward_threads == 1  # never 0 (automatic)
