"""Presets: ``paper`` matches the released model_args.json; dims are read from the backbones' configs."""

from __future__ import annotations

import json

import pytest

from gill.errors import ConfigError
from gill.factory import derive_dims
from gill.manifests import manifests_dir
from gill.presets import get_preset, paper_config


def test_paper_preset_matches_the_official_model_args():
    args = json.loads((manifests_dir() / "official" / "model_args.json").read_text())
    config = paper_config()
    assert config.backbones.lm.id == args["opt_version"]
    assert config.backbones.vision.id == args["visual_encoder"]
    assert config.adapters.n_visual_tokens == args["n_visual_tokens"]
    assert config.adapters.ret_emb_dim == args["ret_emb_dim"]
    assert config.adapters.num_img_tokens == args["num_tokens"] == len(args["gen_token_idx"])
    assert config.adapters.num_clip_tokens == args["num_clip_tokens"]
    assert list(config.adapters.text_emb_layers) == args["text_emb_layers"]
    assert config.adapters.mapper.kind == args["text_fc_mode"]
    assert (config.adapters.mapper.hidden_dim, config.adapters.mapper.num_heads) == (512, 4)


def test_paper_dims_are_read_from_the_shipped_backbone_configs_without_weights():
    dims = derive_dims(paper_config())
    assert dims.lm_hidden == 4096 and dims.lm_num_layers == 32
    assert dims.vision_hidden == 1024 and dims.vision_image_size == 224
    # the mapper's output width comes from SD's text encoder, which equals the UNet's cross-attention width
    assert dims.sd_text_dim == 768 and dims.sd_text_tokens == 77
    assert dims.clip_projection_dim == 768


def test_tiny_dims_differ_per_backbone_so_mixups_fail(tiny_config):
    dims = derive_dims(tiny_config)
    widths = [dims.lm_hidden, dims.vision_hidden, dims.sd_text_dim, dims.clip_projection_dim]
    assert len(set(widths)) == 4


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError) as info:
        get_preset("huge")
    assert "paper" in str(info.value) and "tiny" in str(info.value)
