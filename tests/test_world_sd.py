"""The world-trained Stable Diffusion: shipped intact, loaded like real SD, and good enough to be measured.

The quality floors are the issue's: on held-out captions (scenes the build never rendered), at 20 DPM-Solver++
steps, the background and the described shape's colour are right in at least 90% of images, its 3x3 cell in at
least 60% and colour and cell together in at least 55%; a broken text conditioning (captions shuffled against
their scenes) falls to chance.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from eval.scene_metric import CHANCE, score_image
from gill.factory import load_backbones
from gill.synth.text import cc3m_caption
from gill.utils.io import sha256_tree
from gill.zoo.world_sd import (
    WorldSDConfig,
    generate,
    install_world_sd,
    is_held_out,
    sample_held_out_scenes,
    sample_training_scene,
    verify_world_sd,
)

N = 48


@pytest.fixture(scope="module")
def sd(tiny_config):
    torch.set_num_threads(2)
    pipe = load_backbones(tiny_config, roles=("sd",)).sd
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def held_out():
    scenes = sample_held_out_scenes(N, seed=123, n_shapes=1)
    rng = random.Random(123)
    return scenes, [cc3m_caption(s, rng) for s in scenes]


def _mean(images, scenes, column: str) -> float:
    return float(np.mean([score_image(i, s).columns()[column] for i, s in zip(images, scenes, strict=True)]))


def test_the_shipped_weights_are_intact_and_the_zoo_holds_them(tiny_zoo):
    assert verify_world_sd() == []
    names = {p.name for p in (tiny_zoo / "sd").iterdir()}
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"} <= names
    assert verify_world_sd(folder=tiny_zoo / "sd") == []


def test_a_changed_file_is_named_and_refused(tmp_path, monkeypatch):
    import shutil

    import gill.zoo.world_sd as world_sd
    from gill.errors import InputError

    folder, manifest = world_sd.shipped_paths()
    copy, copy_manifest = tmp_path / "world_sd", tmp_path / "world_sd.json"
    shutil.copytree(folder, copy)
    shutil.copyfile(manifest, copy_manifest)
    config = copy / "unet" / "config.json"
    config.write_text(config.read_text().replace('"sample_size"', '"sample_size" '))
    monkeypatch.setattr(world_sd, "shipped_paths", lambda: (copy, copy_manifest))
    with pytest.raises(InputError) as err:
        install_world_sd(tmp_path / "dest")
    assert "unet/config.json" in str(err.value) and "build-world-sd" in str(err.value)
    assert not (tmp_path / "dest").exists()


def test_held_out_scenes_are_never_drawn_for_training():
    rng = random.Random(0)
    drawn = [sample_training_scene(rng, 0.5, 10) for _ in range(2000)]
    assert not any(is_held_out(s) for s in drawn)
    held = sample_held_out_scenes(50, seed=1)
    assert all(is_held_out(s) for s in held) and len({str(s) for s in held}) == 50


def test_held_out_captions_get_the_background_and_the_shape_colour_right(sd, held_out):
    scenes, captions = held_out
    images = generate(sd, captions, steps=20, guidance=7.5, seed=0, batch=16)
    assert _mean(images, scenes, "scene_background_ok") >= 0.90
    assert _mean(images, scenes, "scene_color_ok") >= 0.90
    assert _mean(images, scenes, "scene_cell_ok") >= 0.60
    assert _mean(images, scenes, "scene_color_cell_ok") >= 0.55


def test_captions_shuffled_against_their_scenes_score_near_chance(sd, held_out):
    scenes, captions = held_out
    shuffled = captions[1:] + captions[:1]
    images = generate(sd, shuffled, steps=20, guidance=7.5, seed=0, batch=16)
    assert _mean(images, scenes, "scene_color_ok") <= 3 * CHANCE["color"]


def test_the_build_is_deterministic_and_loads_like_real_sd(tmp_path):
    from diffusers import StableDiffusionPipeline

    from gill.zoo.tiny import build_world_sd

    tiny = WorldSDConfig(
        vae_steps=2,
        vae_batch=4,
        text_pretrain_steps=2,
        text_pretrain_batch=8,
        pool_size=16,
        unet_steps=2,
        unet_batch=4,
        unet_warmup=1,
        log_every=1,
    )
    first, _ = build_world_sd(seed=3, config=tiny, out=tmp_path / "a", progress=lambda line: None)
    second, _ = build_world_sd(seed=3, config=tiny, out=tmp_path / "b", progress=lambda line: None)
    assert sha256_tree(first) == sha256_tree(second)
    assert verify_world_sd(folder=first, manifest=tmp_path / "a" / "world_sd.json") == []
    pipe = StableDiffusionPipeline.from_pretrained(first)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a small red circle in the center of a white background",
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 3, 64, 64)


def test_the_sd_tokenizer_is_the_zoos_clip_tokenizer(tiny_zoo):
    from transformers import CLIPTokenizer

    sd = CLIPTokenizer.from_pretrained(tiny_zoo / "sd" / "tokenizer")
    clip = CLIPTokenizer.from_pretrained(tiny_zoo / "clip")
    assert sd.get_vocab() == clip.get_vocab() and sd.model_max_length == 77
    text = "then the small red circle moves to the top left corner ."
    assert sd(text).input_ids == clip(text).input_ids
