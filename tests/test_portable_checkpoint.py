"""Portable work folders: a trained workdir copied to another machine or user (other HOME, empty gill cache) loads.

Checkpoints name the tiny zoo's models by the symbolic ids ``gill-tiny/<component>`` (resolved through the cache,
which is filled from the zoo shipped with gill on first use), and files in a workdir record the paths of things
inside it relative to it, so nothing recorded points at the machine or folder the run was made in.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from shard_helpers import pipeline_in, split_folders, trained_workdir, world_samples

from gill.checkpoint import load_adapters, read_checkpoint_config, save_pretrained
from gill.hub import canonical_model_id, locate, resolve_model_id
from gill.pipeline import GenerationSettings, GILLPipeline
from gill.presets import get_preset, tiny_zoo_dir

FIXED = GenerationSettings(max_new_tokens=6, num_inference_steps=2, seed=11)
PROMPT = ["a small red star on the left of a grey background"]


def _outputs(pipe: GILLPipeline) -> dict:
    """Token ids and pixels of a forced generation, and the retrieved key, for the fixed prompt."""
    gen = pipe(PROMPT, FIXED, force_image=True, mode="gen")
    ret = pipe(PROMPT, FIXED, force_image=True, mode="ret")
    return {
        "gen_tokens": gen.token_ids,
        "gen_pixels": np.asarray(gen.images[0].image),
        "ret_tokens": ret.token_ids,
        "ret_key": ret.images[0].key,
        "ret_score": ret.images[0].score,
    }


@pytest.fixture(scope="module")
def moved(tiny_config, small_world, tmp_path_factory) -> dict:
    """A 4-step tiny run with its retrieval bank, its outputs for a fixed input, and a copy of the workdir made
    after which the original is renamed away."""
    base = tmp_path_factory.mktemp("portable")
    original = base / "work"
    trained_workdir(original, small_world, tiny_config, steps=4, run_id="port", bank=True)
    before = _outputs(pipeline_in(original))
    copy = base / "elsewhere" / "copied-work"
    shutil.copytree(original, copy)
    gone = original.rename(base / "work-gone")
    return {"original": original, "gone": gone, "copy": copy, "before": before, "old_cache": tiny_zoo_dir().parent}


def _recorded_files(workdir: Path) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted(workdir.rglob("*.json"))}


def test_a_copied_workdir_loads_with_an_empty_cache_and_gives_the_same_outputs(moved, tmp_path, monkeypatch):
    monkeypatch.setenv("GILL_CACHE_DIR", str(tmp_path / "other-user" / "gill-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "other-user"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    zoo = tiny_zoo_dir()
    assert zoo.parent == tmp_path / "other-user" / "gill-cache" and not zoo.exists()

    start = time.perf_counter()
    assert resolve_model_id("gill-tiny/opt") == str(zoo / "opt")  # installs the zoo into the empty cache
    install_seconds = time.perf_counter() - start
    shipped = json.loads((Path(__file__).resolve().parents[1] / "data_manifests/tiny_zoo/zoo.json").read_text())
    assert json.loads((zoo / "zoo.json").read_text()) == shipped  # copied from the shipped zoo, not rebuilt
    assert install_seconds < 120, f"installing the shipped zoo took {install_seconds:.0f} s"

    copy = moved["copy"]
    pipe = pipeline_in(copy)
    assert pipe.checkpoint_dir == copy / "runs" / "port" / "final" and pipe.bank is not None
    for role in ("lm", "vision", "sd"):
        folder, problem = locate(getattr(pipe.model.config.backbones, role))
        assert problem is None and folder is not None and folder.is_relative_to(zoo), role
    after = _outputs(pipe)
    assert after["gen_tokens"] == moved["before"]["gen_tokens"]
    assert np.array_equal(after["gen_pixels"], moved["before"]["gen_pixels"])
    assert (after["ret_tokens"], after["ret_key"]) == (moved["before"]["ret_tokens"], moved["before"]["ret_key"])
    assert after["ret_score"] == pytest.approx(moved["before"]["ret_score"], abs=1e-6)


def test_recorded_files_hold_tiny_ids_and_no_path_of_the_old_workdir_or_cache(moved):
    copy = moved["copy"]
    config_text = (copy / "runs" / "port" / "final" / "config.json").read_text(encoding="utf-8")
    record = json.loads(config_text)
    ids = {role: ref["id"] for role, ref in record["config"]["backbones"].items()}
    assert ids == {
        "lm": "gill-tiny/opt",
        "vision": "gill-tiny/clip",
        "sd": "gill-tiny/sd",
        "clip_metric": "gill-tiny/clip",
    }
    assert {role: ref["id"] for role, ref in record["backbones"].items()} == ids
    forbidden = {str(moved["original"]), str(moved["original"].resolve()), str(moved["old_cache"])}
    files = _recorded_files(copy)
    assert copy / "runs" / "port" / "config.json" in files  # the run's config
    (bank_manifest,) = [p for p in files if p.parent.parent.name == "index" and p.name == "manifest.json"]
    assert any("features" in p.parts and p.name == "manifest.json" for p in files)  # precompute manifests
    leaks = {str(p.relative_to(copy)): sorted(f for f in forbidden if f in text) for p, text in files.items()}
    assert {p: found for p, found in leaks.items() if found} == {}
    assert json.loads(files[bank_manifest])["checkpoint"]["path"] == "runs/port/final"


def test_a_checkpoint_naming_an_old_absolute_tiny_zoo_path_still_loads(moved, tmp_path):
    """Checkpoints written before the symbolic ids record the zoo's folder on the machine that trained them."""
    from gill.zoo import ZOO_VERSION

    ckpt = tmp_path / "legacy"
    shutil.copytree(moved["copy"] / "runs" / "port" / "final", ckpt)
    record = json.loads((ckpt / "config.json").read_text())
    old = f"/home/someone-else/.cache/gill/tiny-zoo-v{ZOO_VERSION}"
    for section in (record["config"]["backbones"], record["backbones"]):
        for ref in section.values():
            ref["id"] = ref["id"].replace("gill-tiny", old)
    (ckpt / "config.json").write_text(json.dumps(record))
    config = read_checkpoint_config(ckpt)
    assert config.backbones.lm.id == f"{old}/opt" and canonical_model_id(config.backbones.lm.id) == "gill-tiny/opt"
    assert resolve_model_id(config.backbones.sd.id) == str(tiny_zoo_dir() / "sd")
    loaded = load_adapters(ckpt, config=get_preset("tiny"))  # the old path and the symbolic id name one backbone
    assert loaded.config.backbones.vision.id == f"{old}/clip"
    pipe = GILLPipeline.from_pretrained(ckpt, load_sd=False)
    assert pipe.model.config.backbones.lm.id == f"{old}/opt"
    # a path of another zoo version names other weights: not mapped
    assert resolve_model_id("/home/someone-else/.cache/gill/tiny-zoo-v1/opt").endswith("tiny-zoo-v1/opt")


def test_a_backbone_inside_the_workdir_is_recorded_relative_and_found_after_a_move(tiny_config, small_world, tmp_path):
    """E.g. a Stable Diffusion trained into the work folder: checkpoints and manifests name it relative to
    themselves, so the copy loads its own copy of the model."""
    from gill.adapters import build_adapters
    from gill.data.precompute import PrecomputeOptions, precompute_split
    from gill.data.shards import write_image_shard
    from gill.factory import derive_dims, load_backbones
    from gill.tokenization import add_img_tokens

    work = tmp_path / "work"
    shutil.copytree(resolve_model_id("gill-tiny/sd"), work / "models" / "world-sd")
    config = tiny_config.with_backbones(sd=str(work / "models" / "world-sd"))
    write_image_shard(split_folders("train", work).images / "00000.tar", world_samples(small_world, 4))
    options = PrecomputeOptions(batch_size=4)
    precompute_split(split_folders("train", work), config, options, portable_root=work, progress=False)
    dims = derive_dims(config)
    tokens = add_img_tokens(load_backbones(config, roles=("lm",)).tokenizer, config.adapters.num_img_tokens)
    ckpt = work / "runs" / "r" / "final"
    save_pretrained(ckpt, build_adapters(config, dims), config, tokens, portable_root=work)

    record = json.loads((ckpt / "config.json").read_text())
    assert record["config"]["backbones"]["sd"]["id"] == "../../../models/world-sd"
    assert record["config"]["backbones"]["lm"]["id"] == "gill-tiny/opt"
    manifest = json.loads((split_folders("train", work).features / "00000" / "manifest.json").read_text())
    assert manifest["encoders"]["sd_text"]["id"] == "models/world-sd"

    copy = tmp_path / "copy"
    shutil.copytree(work, copy)
    shutil.rmtree(work)
    moved_config = load_adapters(copy / "runs" / "r" / "final").config
    assert moved_config.backbones.sd.id == str(copy.resolve() / "models" / "world-sd")
    assert derive_dims(moved_config) == dims
    moved_sd = config.with_backbones(sd=moved_config.backbones.sd.id)
    again = precompute_split(split_folders("train", copy), moved_sd, options, portable_root=copy, progress=False)
    assert all(r.skipped for r in again)  # same files: the features stay valid after the move
