"""The typed config tree: JSON round trip and validation that names every bad field at once."""

from __future__ import annotations

import json

import pytest

from gill.config import AdapterConfig, DerivedDims, GILLConfig, MapperConfig, ModelRef, check_against_dims
from gill.errors import ConfigError
from gill.presets import paper_config, tiny_config


@pytest.mark.parametrize("make", [paper_config, tiny_config])
def test_config_round_trips_through_json_unchanged(make, tmp_path):
    config = make()
    assert GILLConfig.from_json(config.to_json()) == config
    path = config.save(tmp_path / "c.json")
    assert GILLConfig.load(path) == config
    assert json.loads(path.read_text())["adapters"]["text_emb_layers"] == list(config.adapters.text_emb_layers)


def test_invalid_config_reports_every_problem_with_its_field_path():
    data = paper_config().to_dict()
    data["adapters"]["num_img_tokens"] = "8"
    data["adapters"]["mapper"]["kind"] = "conv"
    data["backbones"]["lm"]["id"] = ""
    data["max_len"] = 3.5
    data["colour"] = "blue"
    with pytest.raises(ConfigError) as info:
        GILLConfig.from_dict(data)
    problems = info.value.problems
    assert any(p.startswith("adapters.num_img_tokens: expected int") for p in problems)
    assert any(p.startswith("adapters.mapper.kind: must be one of") and "gill_mapper" in p for p in problems)
    assert any(p.startswith("backbones.lm.id:") for p in problems)
    assert any(p.startswith("max_len: expected int") for p in problems)
    assert any(p.startswith("colour: unknown field") for p in problems)
    assert len(problems) == 5


def test_value_checks_run_after_types_and_name_nested_fields():
    data = tiny_config().to_dict()
    data["adapters"]["mapper"]["hidden_dim"] = 30  # not divisible by 4 heads
    data["adapters"]["mapper"]["dropout"] = 1.5
    data["adapters"]["ret_emb_dim"] = 0
    with pytest.raises(ConfigError) as info:
        GILLConfig.from_dict(data)
    text = str(info.value)
    assert "adapters.mapper.hidden_dim: must be divisible by num_heads (4), got 30" in text
    assert "adapters.mapper.dropout: must be in [0, 1)" in text
    assert "adapters.ret_emb_dim: must be > 0, got 0" in text


def test_missing_required_section_is_named():
    with pytest.raises(ConfigError, match="backbones: required field is missing"):
        GILLConfig.from_dict({"max_len": 32})


def test_malformed_json_reports_line_and_column():
    with pytest.raises(ConfigError, match="line 1 column"):
        GILLConfig.from_json("{not json")


def test_loading_a_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.json"):
        GILLConfig.load(tmp_path / "nope.json")


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match="num_heads"):
        MapperConfig(hidden_dim=0, num_heads=0)
    with pytest.raises(ConfigError, match="max_len"):
        GILLConfig(backbones=paper_config().backbones, adapters=AdapterConfig(num_img_tokens=8), max_len=9)


def test_backbone_overrides_replace_only_the_named_roles():
    config = paper_config().with_backbones(lm="/models/opt", sd=None)
    assert config.backbones.lm == ModelRef(id="/models/opt")
    assert config.backbones.sd == paper_config().backbones.sd
    assert config.backbones.lm.is_local_path and not config.backbones.vision.is_local_path


def test_settings_that_exceed_the_backbones_are_reported_together():
    dims = DerivedDims(
        lm_hidden=64,
        lm_vocab_size=100,
        lm_max_positions=16,
        lm_num_layers=2,
        vision_hidden=48,
        vision_image_size=32,
        sd_text_dim=32,
        sd_text_tokens=10,
        clip_projection_dim=40,
    )
    config = GILLConfig(backbones=paper_config().backbones, adapters=AdapterConfig(text_emb_layers=(-1, 5)), max_len=32)
    with pytest.raises(ConfigError) as info:
        check_against_dims(config, dims)
    assert len(info.value.problems) == 3
    assert (
        "adapters.num_clip_tokens" in str(info.value) and "layer 5" in str(info.value) and "max_len" in str(info.value)
    )


def test_unknown_backbone_roles_are_rejected_by_name(tiny_config):
    from gill.factory import load_backbones

    with pytest.raises(ConfigError, match="unet: allowed roles are"):
        paper_config().with_backbones(unet="/x")
    with pytest.raises(ConfigError, match="decoder: allowed roles are"):
        load_backbones(tiny_config, roles=("lm", "decoder"))


def test_training_settings_default_to_the_paper_run_and_are_validated():
    from gill.config import TrainConfig

    train = paper_config().train
    assert (train.steps, train.batch_size, train.lr, train.betas, train.weight_decay) == (
        20000,
        200,
        1e-3,
        (0.9, 0.95),
        0.01,
    )
    assert (train.warmup_steps, train.decay_every, train.grad_clip, train.concat_prob) == (2000, 10000, 1.0, 0.5)
    with pytest.raises(ConfigError) as info:
        TrainConfig(batch_size=10, grad_accum=3, concat_prob=2.0, betas=(0.9, 1.5))
    text = str(info.value)
    assert "batch_size: must be divisible by grad_accum (3)" in text and "concat_prob" in text and "betas" in text


def test_paper_exact_fills_the_official_objective_and_refuses_contradicting_options():
    import dataclasses
    import math

    train = paper_config().train
    ours = train.objective()
    assert (
        ours.lp_second_segment,
        ours.separate_mode_passes,
        ours.contrastive_official_world,
        ours.img_init,
        ours.logit_scale_clamp,
    ) == (True, False, 1, "fresh", True)
    exact = dataclasses.replace(train, paper_exact=True).objective()
    assert (
        exact.lp_second_segment,
        exact.separate_mode_passes,
        exact.contrastive_official_world,
        exact.img_init,
        exact.logit_scale_clamp,
    ) == (False, True, 2, "lm_rows", False)
    assert (
        dataclasses.replace(train, paper_exact=True, contrastive_official_world=4)
        .objective()
        .contrastive_official_world
        == 4
    )  # not an objective contradiction: another official world size
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(train, paper_exact=True, lp_second_segment=True, gen_loss="mse", img_init="fresh")
    assert {p.split(":")[0] for p in err.value.problems} == {"lp_second_segment", "gen_loss", "img_init"}
    assert dataclasses.replace(train, logit_scale_clamp=False).objective().logit_scale_clamp is False
    assert train.logit_scale_max == pytest.approx(math.log(100))


def test_a_config_of_an_earlier_version_moves_the_logit_scale_clamp_to_training():
    data = paper_config().to_dict()
    del data["train"]["logit_scale_max"]
    data["adapters"]["logit_scale_max"] = 3.0  # where earlier versions kept it (and clamped at inference too)
    config = GILLConfig.from_dict(data)
    assert config.train.logit_scale_max == 3.0 and not hasattr(config.adapters, "logit_scale_max")
    assert data["adapters"]["logit_scale_max"] == 3.0  # the caller's dict is not changed
