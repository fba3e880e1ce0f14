"""GILLModel over the tiny zoo's OPT: [IMG] splicing, logits, frozen LM, task paths; the parameter summary."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flows.command.parser import main
from gill.adapters import DecisionHead
from gill.errors import ConfigError
from gill.factory import derive_dims, load_backbones
from gill.model import OFFICIAL_TRAINABLE, GILLModel, summary
from gill.presets import paper_config
from gill.tokenization import add_img_tokens


@pytest.fixture(scope="module")
def parts(tiny_config):
    backbones = load_backbones(tiny_config, roles=("lm",))
    tokens = add_img_tokens(backbones.tokenizer, tiny_config.adapters.num_img_tokens)
    return tiny_config, derive_dims(tiny_config), backbones.lm, backbones.tokenizer, tokens


def make_model(parts, ids=None, **kw) -> GILLModel:
    config, dims, lm, _, tokens = parts
    torch.manual_seed(0)
    return GILLModel(config, dims, lm, ids if ids is not None else tokens.ids, **kw)


def caption_ids(parts, captions=("a red circle", "two blue squares on grass")) -> dict[str, torch.Tensor]:
    _, _, _, tok, tokens = parts
    return tok([c + tokens.suffix for c in captions], return_tensors="pt", padding=True)


def test_img_tokens_sit_past_the_tiny_lm_rows_so_the_lm_is_never_resized(parts):
    _, dims, lm, _, tokens = parts
    model = make_model(parts)
    assert tokens.ids[0] == lm.get_input_embeddings().num_embeddings == dims.lm_vocab_size
    assert model.vocab_size == tokens.ids[-1] + 1
    assert lm.get_input_embeddings().num_embeddings == dims.lm_vocab_size


def test_embed_tokens_takes_img_rows_from_our_table_and_text_rows_from_the_lm(parts):
    model = make_model(parts)
    ids = caption_ids(parts).input_ids
    embeds = model.embed_tokens(ids)
    is_img = ids >= model.first_img_id
    torch.testing.assert_close(embeds[is_img], model.adapters.img_embeddings.weight[ids[is_img] - model.first_img_id])
    torch.testing.assert_close(embeds[~is_img], model.lm.get_input_embeddings().weight[ids[~is_img]])


def test_gradients_reach_only_the_adapters(parts):
    model = make_model(parts)
    batch = caption_ids(parts)
    out = model.forward_lm(model.embed_tokens(batch.input_ids), batch.attention_mask)
    h_img = model.img_states(out.hidden_states[0], batch.attention_mask.sum(1))
    loss = out.logits.logsumexp(-1).mean() + model.generation_embeddings(h_img).square().mean()
    loss.backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(not p.requires_grad for p in model.lm.parameters())
    assert model.adapters.img_embeddings.weight.grad.abs().sum() > 0
    assert model.adapters.mapper.fc.weight.grad.abs().sum() > 0
    ids = {id(p) for p in model.trainable_parameters()}
    assert ids == {id(p) for p in model.adapters.parameters()}
    assert not ids & {id(p) for p in model.lm.parameters()}


def test_logits_put_tied_img_columns_at_the_img_ids(parts):
    model = make_model(parts)
    batch = caption_ids(parts)
    out = model.forward_lm(model.embed_tokens(batch.input_ids), batch.attention_mask)
    assert out.logits.shape == (*batch.input_ids.shape, model.vocab_size)
    img = out.logits[..., model.first_img_id :]
    torch.testing.assert_close(img, out.last_hidden_state @ model.adapters.img_embeddings.weight.T)
    torch.testing.assert_close(out.logits[..., : model.lm_rows], model.lm.lm_head(out.last_hidden_state))
    torch.testing.assert_close(out.hidden_states[0], out.last_hidden_state)  # text_emb_layers = (-1,)


def test_img_ids_overlapping_the_lm_rows_still_come_from_our_table(parts):
    """OPT-6.7B has 50272 rows for 50265 tokens: the first [IMG] ids land on padding rows, the last past them."""
    lm_rows = parts[2].get_input_embeddings().num_embeddings
    model = make_model(parts, ids=range(lm_rows - 5, lm_rows + 3))
    ids = torch.tensor([[5, lm_rows - 5, lm_rows - 1, lm_rows, lm_rows + 2]])
    embeds = model.embed_tokens(ids)
    torch.testing.assert_close(embeds[0, 1:], model.adapters.img_embeddings.weight[[0, 4, 5, 7]])
    hidden = torch.randn(1, 2, model.dims.lm_hidden)
    logits = model.logits(hidden)
    assert logits.shape[-1] == lm_rows + 3
    torch.testing.assert_close(logits[..., lm_rows - 5 :], hidden @ model.adapters.img_embeddings.weight.T)


def test_paper_exact_img_rows_start_from_the_lm_rows_that_exist_and_fresh_past_them(parts):
    """Official §1.2: OPT-6.7B's unused rows 50266-50271 become [IMG0..5]; [IMG6..7] are new rows."""
    lm_rows = parts[2].get_input_embeddings().num_embeddings
    model = make_model(parts, ids=range(lm_rows - 6, lm_rows + 2))
    fresh = model.adapters.img_embeddings.weight.detach().clone()
    assert model.init_img_from_lm_rows_() == 6
    table = model.adapters.img_embeddings.weight
    torch.testing.assert_close(table[:6], parts[2].get_input_embeddings().weight[lm_rows - 6 :])
    torch.testing.assert_close(table[6:], fresh[6:])  # no LM row to copy: the fresh draw stays
    assert table.requires_grad
    assert make_model(parts).init_img_from_lm_rows_() == 0  # the tiny zoo's [IMG] ids lie past the LM's rows


def test_columns_past_the_lm_rows_that_are_not_img_are_minus_inf(parts):
    lm_rows = parts[2].get_input_embeddings().num_embeddings
    model = make_model(parts, ids=range(lm_rows + 2, lm_rows + 10))
    logits = model.logits(torch.randn(2, 3, model.dims.lm_hidden))
    assert logits.shape[-1] == lm_rows + 10
    assert torch.isinf(logits[..., lm_rows : lm_rows + 2]).all() and torch.isfinite(logits[..., lm_rows + 2 :]).all()
    assert model.embed_tokens(torch.tensor([[lm_rows + 1]])).isfinite().all()  # clamped, never out of range


def test_non_consecutive_img_ids_are_rejected(parts):
    with pytest.raises(ConfigError, match="consecutive"):
        make_model(parts, ids=[1, 2, 3, 4, 5, 6, 7, 9])


def test_train_mode_never_reaches_the_frozen_lm(parts):
    model = make_model(parts).train()
    assert model.training and model.adapters.training and not model.lm.training
    assert not any(m.training for m in model.lm.modules())
    model.eval()
    assert not model.adapters.training


def test_task_paths_have_the_configured_shapes(parts):
    config, dims, _, _, _ = parts
    model = make_model(parts, decision_head=DecisionHead(dims.lm_hidden))
    feats = torch.randn(3, dims.vision_hidden)
    a = config.adapters
    assert model.encode_images(feats).shape == (3, a.n_visual_tokens, dims.lm_hidden)
    assert model.image_retrieval_embeddings(feats).shape == (3, a.ret_emb_dim)
    assert model.text_retrieval_embeddings(torch.randn(3, dims.lm_hidden)).shape == (3, a.ret_emb_dim)
    h_img = torch.randn(3, a.num_img_tokens, dims.lm_hidden)
    assert model.generation_embeddings(h_img).shape == (3, a.num_clip_tokens, dims.sd_text_dim)
    assert model.decision_logits(h_img[:, 0]).shape == (3, 2)
    with pytest.raises(ConfigError, match="decision head"):
        make_model(parts).decision_logits(h_img[:, 0])


def test_img_states_are_the_states_at_the_img_inputs(parts):
    model = make_model(parts)
    batch = caption_ids(parts)
    hidden = torch.randn(*batch.input_ids.shape, model.dims.lm_hidden)
    states = model.img_states(hidden, batch.attention_mask.sum(1))
    positions = (batch.input_ids >= model.first_img_id).nonzero()
    torch.testing.assert_close(states.reshape(-1, hidden.shape[-1]), hidden[positions[:, 0], positions[:, 1]])


def test_other_text_emb_layers_return_those_lm_hidden_states(parts):
    config, dims, lm, _, tokens = parts
    config = dataclasses.replace(config, adapters=dataclasses.replace(config.adapters, text_emb_layers=(1, -1)))
    model = GILLModel(config, dims, lm, tokens.ids)
    batch = caption_ids(parts)
    out = model.forward_lm(model.embed_tokens(batch.input_ids), batch.attention_mask)
    ref = lm.base_model(
        inputs_embeds=model.embed_tokens(batch.input_ids),
        attention_mask=batch.attention_mask,
        output_hidden_states=True,
    )
    torch.testing.assert_close(out.hidden_states[0], ref.hidden_states[1])
    torch.testing.assert_close(out.hidden_states[1], ref.last_hidden_state)


def test_img_rows_rescale_to_the_mean_norm_of_the_real_vocabulary(parts):
    model = make_model(parts)
    weight = model.lm.get_input_embeddings().weight
    assert model.img_embedding_target_norm() == pytest.approx(weight.norm(dim=-1).mean().item(), rel=1e-6)
    model.rescale_img_embeddings_()
    norms = model.adapters.img_embeddings.weight.norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, model.img_embedding_target_norm()))


def test_paper_summary_counts_the_released_50_096_385_trainable_without_weights():
    result = summary(paper_config())
    assert result.trainable == OFFICIAL_TRAINABLE == 50_096_385
    assert result.differences() == []
    rows = {r.name: r for r in result.rows}
    assert rows["mapper"].trainable == 31_958_784 and rows["input_proj"].trainable == 16_793_600
    assert rows["frozen lm"].frozen == 6_658_473_984 and rows["frozen lm"].trainable == 0
    assert rows["frozen vision"].frozen > 0


def test_model_summary_command_prints_the_paper_table(capsys):
    assert main(["model", "summary", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "50,096,385" in out and "matches the released GILL" in out
    for name in (
        "input_proj",
        "img_embeddings",
        "retrieval.text_proj",
        "retrieval.image_proj",
        "retrieval.logit_scale",
        "mapper",
        "frozen lm",
        "frozen vision",
    ):
        assert name in out


def test_tiny_summary_explains_why_it_differs_from_the_release(tiny_config, capsys):
    assert main(["model", "summary", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "differs from the released GILL" in out
    assert "mapper:" in out and "hidden 512, 4 enc + 4 dec layers" in out
