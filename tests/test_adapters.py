"""The trainable adapters: shapes and parameter counts of every mapper, [IMG] table, retrieval heads, decision head."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gill.adapters import (
    DecisionHead,
    GILLMapper,
    ImgTokenEmbeddings,
    RetrievalHeads,
    build_adapters,
    build_mapper,
)
from gill.config import AdapterConfig, DerivedDims, MapperConfig
from gill.errors import ConfigError
from gill.factory import derive_dims
from gill.presets import paper_config

# docs/official-gill.md §1.3: the released checkpoint's per-module parameter counts.
PAPER_COUNTS = {
    "input_proj": 16_793_600,
    "img_embeddings": 32_768,
    "retrieval.text_proj": 1_048_832,
    "retrieval.image_proj": 262_400,
    "retrieval.logit_scale": 1,
    "mapper": 31_958_784,
}

DIMS = DerivedDims(
    lm_hidden=24,
    lm_vocab_size=100,
    lm_max_positions=64,
    lm_num_layers=2,
    vision_hidden=20,
    vision_image_size=32,
    sd_text_dim=12,
    sd_text_tokens=77,
    clip_projection_dim=16,
)
MAPPER = MapperConfig(hidden_dim=16, num_heads=4, num_encoder_layers=2, num_decoder_layers=1, ffn_dim=40)


def adapter_config(kind: str = "gill_mapper", **kw) -> AdapterConfig:
    return AdapterConfig(
        num_img_tokens=8,
        n_visual_tokens=3,
        ret_emb_dim=10,
        num_clip_tokens=77,
        mapper=dataclasses.replace(MAPPER, kind=kind),
        **kw,
    )


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(i: int, o: int) -> int:
    return i * o + o


def encoder_layer(h: int, f: int) -> int:
    return linear(h, 3 * h) + linear(h, h) + linear(h, f) + linear(f, h) + 2 * 2 * h


def decoder_layer(h: int, f: int) -> int:
    return 2 * (linear(h, 3 * h) + linear(h, h)) + linear(h, f) + linear(f, h) + 3 * 2 * h


def expected_mapper_params(kind: str, d: int, dt: int, q: int, m: MapperConfig) -> int:
    h, f = m.hidden_dim, m.ffn_dim
    if kind == "linear":
        return linear(d, dt)
    if kind == "mlp3":
        return linear(d, h) + linear(h, h) + linear(h, dt)
    shared = linear(d, h) + q * h + linear(h, dt)
    encoder = m.num_encoder_layers * encoder_layer(h, f) + 2 * h  # + the final LayerNorm
    if kind == "transformer_encoder":
        return shared + encoder
    return shared + encoder + m.num_decoder_layers * decoder_layer(h, f) + 2 * h


@pytest.mark.parametrize("kind", ["gill_mapper", "linear", "mlp3", "transformer_encoder"])
def test_every_mapper_maps_img_states_to_77_sd_tokens_with_the_expected_parameter_count(kind):
    torch.manual_seed(0)
    config = adapter_config(kind)
    mapper = build_mapper(config, DIMS)
    h_img, e_img = torch.randn(3, 8, DIMS.lm_hidden), torch.randn(8, DIMS.lm_hidden)
    out = mapper(h_img, e_img)
    assert out.shape == (3, 77, DIMS.sd_text_dim)
    assert n_params(mapper) == expected_mapper_params(kind, DIMS.lm_hidden, DIMS.sd_text_dim, 77, config.mapper)
    if kind in ("linear", "mlp3"):  # one output per [IMG] token, zero-padded like the official non-mapper modes
        assert out[:, 8:].abs().sum() == 0 and out[:, :8].abs().sum() > 0
    else:  # the [IMG] embeddings are the mapper's only positional signal: they must change the output
        assert not torch.allclose(out, mapper(h_img, torch.zeros_like(e_img)))


def test_gill_mapper_has_the_official_structure_and_paper_parameter_count():
    dims = derive_dims(paper_config())
    with torch.device("meta"):
        mapper = build_mapper(paper_config().adapters, dims)
    assert isinstance(mapper, GILLMapper)
    assert n_params(mapper) == PAPER_COUNTS["mapper"]
    assert mapper.query_embs.shape == (1, 77, 512)
    assert (mapper.fc.in_features, mapper.fc.out_features, mapper.out.out_features) == (4096, 512, 768)
    assert len(mapper.tfm.encoder.layers) == 4 and len(mapper.tfm.decoder.layers) == 4
    layer = mapper.tfm.encoder.layers[0]
    assert layer.norm_first and layer.self_attn.num_heads == 4 and layer.linear1.out_features == 2048
    keys = {k for k in mapper.state_dict() if ".layers.0." in k}
    assert "tfm.encoder.layers.0.self_attn.in_proj_weight" in keys
    assert "tfm.decoder.layers.0.multihead_attn.out_proj.weight" in keys and "tfm.decoder.layers.0.norm3.bias" in keys
    assert {"tfm.encoder.norm.weight", "tfm.decoder.norm.bias"} <= set(mapper.state_dict())


def test_paper_adapters_match_the_released_module_counts_on_meta():
    with torch.device("meta"):
        adapters = build_adapters(paper_config(), derive_dims(paper_config()))
    counts = {name: n_params(adapters.get_submodule(name)) for name in PAPER_COUNTS if name != "retrieval.logit_scale"}
    counts["retrieval.logit_scale"] = adapters.retrieval.logit_scale.numel()
    assert counts == PAPER_COUNTS
    assert n_params(adapters) == 50_096_385


def test_gill_mapper_treats_batch_rows_independently_and_has_no_masks():
    torch.manual_seed(0)
    mapper = build_mapper(adapter_config(), DIMS).eval()
    h, e = torch.randn(4, 8, DIMS.lm_hidden), torch.randn(8, DIMS.lm_hidden)
    torch.testing.assert_close(mapper(h, e)[1:2], mapper(h[1:2], e))
    # no causal mask in the encoder: changing the last [IMG] state changes every output query
    h2 = h.clone()
    h2[:, -1] += 1.0
    assert (mapper(h, e) - mapper(h2, e)).abs().amax(dim=-1).min() > 0


def test_input_projection_and_retrieval_heads_have_the_configured_shapes():
    adapters = build_adapters(dataclasses.replace(paper_config(), adapters=adapter_config()), DIMS)
    feats = torch.randn(5, DIMS.vision_hidden)
    assert adapters.input_proj(feats).shape == (5, 3, DIMS.lm_hidden)
    assert adapters.retrieval.image_proj(feats).shape == (5, 10)
    assert adapters.retrieval.text_proj(torch.randn(5, DIMS.lm_hidden)).shape == (5, 10)
    assert adapters.img_embeddings.weight.shape == (8, DIMS.lm_hidden)
    assert set(dict(adapters.named_children())) == {"input_proj", "img_embeddings", "retrieval", "mapper"}


def test_img_table_init_uses_the_given_std_and_rescale_sets_every_row_norm():
    torch.manual_seed(0)
    table = ImgTokenEmbeddings(64, 256, init_std=0.05)
    assert table.weight.std().item() == pytest.approx(0.05, rel=0.05)
    table.rescale_(3.5)
    torch.testing.assert_close(table.weight.norm(dim=-1), torch.full((64,), 3.5))
    assert table.weight.requires_grad  # rescaling happens under no_grad and keeps the parameter trainable


def test_logit_scale_starts_at_clip_init_and_is_never_clamped_by_the_model():
    heads = RetrievalHeads(8, 6, 4, logit_scale_init=math.log(1 / 0.07))
    assert heads.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        heads.logit_scale.fill_(5.0)  # above ln 100: a released value is used as it is
    assert heads.scale().item() == pytest.approx(math.exp(5.0), rel=1e-5)
    heads.clamp_(math.log(100))  # the training option clamps the parameter itself
    assert heads.logit_scale.item() == pytest.approx(math.log(100)) and heads.logit_scale.requires_grad


def test_decision_head_gives_gen_ret_logits_with_and_without_the_retrieval_score():
    head = DecisionHead(DIMS.lm_hidden).eval()
    assert head(torch.randn(3, DIMS.lm_hidden)).shape == (3, 2)
    assert head.linear.in_features == DIMS.lm_hidden and (DecisionHead.GEN, DecisionHead.RET) == (0, 1)
    paper_era = DecisionHead(DIMS.lm_hidden, with_retrieval_score=True).eval()
    assert paper_era.linear.in_features == DIMS.lm_hidden + 1
    assert paper_era(torch.randn(3, DIMS.lm_hidden), torch.randn(3)).shape == (3, 2)
    with pytest.raises(ValueError, match="retrieval-score"):
        paper_era(torch.randn(3, DIMS.lm_hidden))
    with pytest.raises(ValueError, match="no retrieval score"):
        head(torch.randn(3, DIMS.lm_hidden), torch.randn(3))


def test_per_token_mappers_refuse_more_img_tokens_than_output_tokens():
    config = dataclasses.replace(adapter_config("linear"), num_clip_tokens=4)
    with pytest.raises(ConfigError, match="num_img_tokens"):
        build_mapper(config, DIMS)
