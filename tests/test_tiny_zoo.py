"""The tiny zoo: same classes as the real backbones, loaded only through from_pretrained, deterministic."""

from __future__ import annotations

import pytest
import torch

from gill.errors import InputError
from gill.factory import load_backbones
from gill.utils.io import sha256_tree
from gill.zoo import ZOO_VERSION, build_tiny_zoo, ensure_tiny_zoo


@pytest.fixture
def short_pretraining(monkeypatch):
    """Few pre-training steps keep full builds cheap; seeds still set initialisation and data order."""
    import gill.zoo.tiny as tiny

    monkeypatch.setattr(tiny, "LM_PRETRAIN_STEPS", 3)
    monkeypatch.setattr(tiny, "CLIP_PRETRAIN_STEPS", 3)


def test_the_session_zoo_is_the_shipped_one_checked_file_by_file(tiny_zoo):
    from gill.zoo.tiny import ZooManifest, shipped_zoo_dir, shipped_zoo_problems

    assert shipped_zoo_problems() == []
    shipped = ZooManifest.read(shipped_zoo_dir())
    for name in ("opt", "clip", "sd"):
        assert sha256_tree(tiny_zoo / name) == shipped.components[name], name


def test_building_twice_gives_byte_identical_components(tmp_path, short_pretraining):
    first, second = build_tiny_zoo(tmp_path / "a"), build_tiny_zoo(tmp_path / "b")
    assert first.components == second.components


def test_a_different_seed_gives_different_weights(tmp_path, short_pretraining):
    seed0, seed7 = build_tiny_zoo(tmp_path / "seed0", seed=0), build_tiny_zoo(tmp_path / "seed7", seed=7)
    assert all(seed0.components[name] != seed7.components[name] for name in ("opt", "clip"))
    assert seed0.components["sd"] == seed7.components["sd"]  # the shipped world SD, whatever the zoo seed


def test_a_seed_without_a_shipped_zoo_is_built(tmp_path, short_pretraining):
    manifest = ensure_tiny_zoo(tmp_path / "zoo7", seed=7)
    assert manifest.seed == 7 and (tmp_path / "zoo7" / "opt").is_dir()


def test_zoo_holds_the_paper_backbone_classes(tiny_config):
    models = load_backbones(tiny_config, roles=("lm", "vision", "sd", "clip_metric"))
    assert type(models.lm).__name__ == "OPTForCausalLM"
    assert type(models.vision).__name__ == "CLIPVisionModel"
    assert type(models.clip_metric).__name__ == "CLIPModel"
    assert type(models.sd).__name__ == "StableDiffusionPipeline"
    names = {k: type(v).__name__ for k, v in models.sd.components.items() if v is not None}
    assert names == {
        "unet": "UNet2DConditionModel",
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModel",
        "tokenizer": "CLIPTokenizer",
        "scheduler": "DPMSolverMultistepScheduler",
    }
    assert models.sd.unet.dtype == torch.float32 and models.sd.vae.dtype == torch.float32  # fp16 on disk
    assert not models.lm.training and not models.vision.training


def test_reloaded_models_run_a_forward_pass(tiny_config, small_world):
    from PIL import Image

    models = load_backbones(tiny_config, roles=("lm", "vision", "sd"))
    ids = models.tokenizer("a small red circle", return_tensors="pt").input_ids
    with torch.no_grad():
        out = models.lm(input_ids=ids, labels=ids, output_hidden_states=True)
    assert out.logits.shape == (1, ids.shape[1], models.lm.config.vocab_size)
    assert torch.isfinite(out.loss)
    image = Image.open(next(small_world.cc3m_images_dir.rglob("*.jpg"))).convert("RGB")
    pixels = models.image_processor(images=image, return_tensors="pt").pixel_values
    assert models.vision(pixel_values=pixels).pooler_output.shape == (1, models.vision.config.hidden_size)
    gen = models.sd(
        "a small red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    assert gen.shape == (1, 3, 64, 64) and 0.0 <= float(gen.min()) and float(gen.max()) <= 1.0


def test_tiny_lm_learns_quickly_on_cpu(tiny_config):
    """Big enough that learning is visible: a few steps of SGD on one caption cut its loss clearly."""
    models = load_backbones(tiny_config, roles=("lm",))
    lm = models.lm.train()
    ids = models.tokenizer("a large blue star at the top of a striped background", return_tensors="pt").input_ids
    optim = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    first = None
    for _ in range(20):
        loss = lm(input_ids=ids, labels=ids).loss
        first = loss.item() if first is None else first
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert loss.item() < 0.5 * first


def test_ensure_reuses_a_built_zoo_and_refuses_a_foreign_folder(tmp_path, tiny_zoo):
    manifest = ensure_tiny_zoo(tiny_zoo)
    assert manifest.version == ZOO_VERSION
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a tiny zoo"):
        ensure_tiny_zoo(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_interrupted_build_leaves_no_zoo_behind(tmp_path, monkeypatch, short_pretraining):
    import gill.zoo.tiny as tiny

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "pretrain_lm", boom)  # the CLIP is already written by then
    with pytest.raises(RuntimeError):
        build_tiny_zoo(tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    assert list(tmp_path.iterdir()) == []
