"""GILL losses: label masks, concat-captions against a plain oracle, LM/contrastive/generation losses, 2-rank gloo."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gill.losses import (
    IGNORE_INDEX,
    LossScales,
    captioning_concat_drop_mask,
    captioning_labels,
    combine,
    concat_pairs,
    contrastive_loss,
    draw_concat,
    generation_loss,
    img_positions,
    lm_loss,
    lp_labels,
    sd_token_weights,
    second_bos_mask,
    token_accuracy,
)

BOS, PAD = 2, 1
IMG = (90, 91, 92)
X = IGNORE_INDEX


@pytest.fixture
def ids_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows: short caption + pads, longer caption + one pad, truncated row (tail overwritten, no pad)."""
    ids = torch.tensor(
        [
            [BOS, 10, 11, *IMG, PAD, PAD, PAD],
            [BOS, 10, 11, 12, 13, *IMG, PAD],
            [BOS, 10, 11, 12, 13, 14, *IMG],
        ]
    )
    return ids, (ids != PAD).long()


# -- labels ------------------------------------------------------------------------------------------------


def test_captioning_labels_mask_prefix_and_everything_from_the_first_img_token(ids_and_mask) -> None:
    ids, mask = ids_and_mask
    labels = captioning_labels(ids, mask, IMG, n_prefix=2)
    expected = torch.tensor(
        [
            [X, X, BOS, 10, 11, X, X, X, X, X, X],
            [X, X, BOS, 10, 11, 12, 13, X, X, X, X],
            [X, X, BOS, 10, 11, 12, 13, 14, X, X, X],
        ]
    )
    assert torch.equal(labels, expected)


def test_captioning_labels_mask_from_the_first_pad_even_without_img_tokens() -> None:
    ids = torch.tensor([[BOS, 10, 11, PAD, PAD]])
    labels = captioning_labels(ids, (ids != PAD).long(), IMG, n_prefix=0)
    assert labels.tolist() == [[BOS, 10, 11, X, X]]


def test_lp_labels_keep_caption_and_img0_only(ids_and_mask) -> None:
    ids, mask = ids_and_mask
    expected = torch.tensor(
        [
            [BOS, 10, 11, IMG[0], X, X, X, X, X],
            [BOS, 10, 11, 12, 13, IMG[0], X, X, X],
            [BOS, 10, 11, 12, 13, 14, IMG[0], X, X],
        ]
    )
    assert torch.equal(lp_labels(ids, mask, IMG), expected)


def test_img_positions_find_each_img_token(ids_and_mask) -> None:
    ids, _ = ids_and_mask
    assert img_positions(ids, IMG).tolist() == [[3, 4, 5], [5, 6, 7], [6, 7, 8]]


@pytest.mark.parametrize(
    "bad_row",
    [
        [BOS, 10, IMG[0], IMG[1], PAD, PAD],
        [BOS, 10, IMG[1], IMG[0], IMG[2], PAD],
        [BOS, IMG[0], 10, IMG[1], IMG[2], PAD],
    ],
    ids=["missing", "out-of-order", "not-consecutive"],
)
def test_img_positions_name_the_row_without_a_full_run(bad_row) -> None:
    ids = torch.tensor([[BOS, 10, *IMG, PAD], bad_row])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        img_positions(ids, IMG)


# -- concat-captions ---------------------------------------------------------------------------------------


def _ragged_batch(gen: torch.Generator, B: int, L: int, D: int, n_prefix: int):
    """Random right-padded rows ``[prefix][BOS caption [IMG]s pad]`` with random lengths."""
    text_len = L - n_prefix
    ids = torch.full((B, text_len), PAD)
    for r in range(B):
        cap = int(torch.randint(0, text_len - len(IMG), (), generator=gen))  # caption tokens after BOS
        body = [BOS] + torch.randint(10, 50, (cap,), generator=gen).tolist() + list(IMG)
        ids[r, : len(body)] = torch.tensor(body[:text_len])
    mask = torch.cat([torch.ones(B, n_prefix, dtype=torch.long), (ids != PAD).long()], dim=1)
    embeds = torch.randn(B, L, D, generator=gen, requires_grad=True)
    return ids, mask, embeds


def _concat_oracle(embeds, labels, mask, drop, positions, second_segment_loss: bool, width: int):
    """Plain-loop reference of concat_pairs."""
    B, L, D = embeds.shape
    out_e = torch.zeros(B // 2, width, D)
    out_l = torch.full((B // 2, width), X)
    out_m = torch.zeros(B // 2, width, dtype=mask.dtype)
    out_p = torch.zeros_like(positions)
    for i in range(B // 2):
        col = 0
        for r in (2 * i, 2 * i + 1):
            new_col = {}
            for j in range(L):
                if mask[r, j] == 1 and not drop[r, j]:
                    out_e[i, col] = embeds[r, j]
                    out_l[i, col] = labels[r, j] if (r % 2 == 0 or second_segment_loss) else X
                    out_m[i, col] = 1
                    new_col[j] = col
                    col += 1
            out_p[r] = torch.tensor([new_col[int(p)] for p in positions[r]])
    return out_e, out_l, out_m, out_p


@pytest.mark.parametrize("second_segment_loss", [True, False])
@pytest.mark.parametrize("n_prefix", [0, 2])
@pytest.mark.parametrize("trim", [True, False])
def test_concat_pairs_match_the_plain_oracle_on_ragged_batches(second_segment_loss, n_prefix, trim) -> None:
    gen = torch.Generator().manual_seed(7 + n_prefix)
    for B, L in ((2, 9), (6, 12), (8, 16)):
        ids, mask, embeds = _ragged_batch(gen, B, L, 5, n_prefix)
        labels = captioning_labels(ids, mask[:, n_prefix:], IMG, n_prefix) if n_prefix else lp_labels(ids, mask, IMG)
        drop = second_bos_mask(ids, BOS, n_prefix)
        positions = img_positions(ids, IMG) + n_prefix
        out = concat_pairs(embeds, labels, mask, drop, positions, second_segment_loss=second_segment_loss, trim=trim)
        kept = (mask.bool() & ~drop).sum(1).view(-1, 2).sum(1)
        width = int(kept.max()) if trim else 2 * L
        exp_e, exp_l, exp_m, exp_p = _concat_oracle(
            embeds.detach(), labels, mask, drop, positions, second_segment_loss, width
        )
        assert torch.equal(out.embeds, exp_e)
        assert torch.equal(out.labels, exp_l)
        assert torch.equal(out.attention_mask, exp_m)
        assert torch.equal(out.positions, exp_p)


def test_concat_pairs_put_both_img_blocks_where_the_hidden_states_are_read() -> None:
    ids = torch.tensor([[BOS, 10, *IMG, PAD, PAD], [BOS, 20, 21, 22, *IMG]])
    mask = (ids != PAD).long()
    embeds = ids.float().unsqueeze(-1)  # (B, T, 1) each embedding is its id
    out = concat_pairs(embeds, lp_labels(ids, mask, IMG), mask, second_bos_mask(ids, BOS), img_positions(ids, IMG))
    row = [BOS, 10, *IMG, 20, 21, 22, *IMG]
    assert out.embeds[0, :, 0].long().tolist() == row
    assert out.positions.tolist() == [[2, 3, 4], [8, 9, 10]]
    assert out.labels.tolist() == [[BOS, 10, IMG[0], X, X, 20, 21, 22, IMG[0], X, X]]
    off = concat_pairs(embeds, lp_labels(ids, mask, IMG), mask, second_bos_mask(ids, BOS), second_segment_loss=False)
    assert off.labels.tolist() == [[BOS, 10, IMG[0]] + [X] * 8]
    assert off.positions is None


def test_concatenated_captions_read_v1_bos_c1_v2_c2_as_the_official_captioning_pass() -> None:
    """Captioning mode: each segment ends at its first pad or [IMG]; no [IMG] block sits between the captions."""
    ids = torch.tensor([[BOS, 10, 11, *IMG, PAD], [BOS, 20, *IMG, PAD, PAD]])
    mask = (ids != PAD).long()
    k = 2
    visual = torch.tensor([[[-1.0], [-1.0]], [[-2.0], [-2.0]]])  # (B, k, 1): v1 = -1, v2 = -2
    embeds = torch.cat([visual, ids.float().unsqueeze(-1)], dim=1)  # each text embedding is its id
    full_mask = torch.cat([torch.ones(2, k, dtype=torch.long), mask], dim=1)
    labels = captioning_labels(ids, mask, IMG, k)
    out = concat_pairs(embeds, labels, full_mask, captioning_concat_drop_mask(ids, BOS, IMG, k))
    assert out.embeds[0, :, 0].tolist() == [-1, -1, BOS, 10, 11, -2, -2, 20]  # [v1 BOS c1][v2 c2], token by token
    assert out.labels.tolist() == [[X, X, BOS, 10, 11, X, X, 20]]
    assert out.attention_mask.tolist() == [[1] * 8]


def test_concat_pairs_send_gradients_back_to_the_kept_input_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    ids, mask, embeds = _ragged_batch(gen, 4, 10, 3, 0)
    drop = second_bos_mask(ids, BOS)
    out = concat_pairs(embeds, lp_labels(ids, mask, IMG), mask, drop)
    weights = torch.randn(out.embeds.shape, generator=gen)
    (out.embeds * weights).sum().backward()
    keep = mask.bool() & ~drop
    assert torch.all(embeds.grad[~keep] == 0)
    assert torch.equal(embeds.grad[keep].sort(dim=0).values, weights[out.attention_mask.bool()].sort(dim=0).values)


def test_concat_pairs_refuse_an_odd_batch_naming_b() -> None:
    embeds = torch.zeros(3, 4, 2)
    with pytest.raises(ValueError, match="B=3"):
        concat_pairs(embeds, torch.zeros(3, 4, dtype=torch.long), torch.ones(3, 4))


def test_concat_pairs_refuse_positions_on_dropped_tokens() -> None:
    ids = torch.tensor([[BOS, *IMG], [BOS, *IMG]])
    mask = torch.ones_like(ids)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        concat_pairs(
            ids.float().unsqueeze(-1), ids, mask, second_bos_mask(ids, BOS), torch.tensor([[0, 1, 2], [0, 1, 2]])
        )


def test_second_bos_mask_marks_only_odd_rows_after_the_prefix() -> None:
    ids = torch.tensor([[BOS, 5, PAD], [BOS, 6, PAD]])
    assert second_bos_mask(ids, BOS, n_prefix=1).tolist() == [[False] * 4, [False, True, False, False]]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        second_bos_mask(torch.tensor([[BOS, 5], [7, 6]]), BOS)


def test_draw_concat_is_reproducible_and_roughly_fair() -> None:
    draws = [draw_concat(torch.Generator().manual_seed(3)) for _ in range(3)]
    assert len(set(draws)) == 1
    gen = torch.Generator().manual_seed(0)
    assert 400 < sum(draw_concat(gen) for _ in range(1000)) < 600
    assert draw_concat(gen, p=0.0) is False and draw_concat(gen, p=1.0) is True
    with pytest.raises(ValueError, match="p must be"):
        draw_concat(gen, p=1.5)


# -- LM loss -----------------------------------------------------------------------------------------------


def test_lm_loss_equals_cross_entropy_on_shifted_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen)
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[0, 4:] = X
    labels[2, :3] = X
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=X)
    torch.testing.assert_close(lm_loss(logits, labels), expected)
    assert lm_loss(logits, torch.full_like(labels, X)).item() == 0.0


def test_token_accuracy_counts_top_k_hits_on_labelled_tokens() -> None:
    logits = torch.zeros(1, 4, 6)
    logits[0, 0, 3] = 5  # predicts 3 for label at t=1 -> hit
    logits[0, 1, :] = torch.tensor([0.0, 5, 4, 3, 2, 1])  # label 4 is ranked 4th -> top5 hit only
    labels = torch.tensor([[X, 3, 4, X]])
    acc = token_accuracy(logits, labels)
    assert acc["top1"].item() == 0.5 and acc["top5"].item() == 1.0


# -- contrastive loss ------------------------------------------------------------------------------------


def test_contrastive_loss_equals_a_hand_computation_and_is_symmetric() -> None:
    gen = torch.Generator().manual_seed(0)
    text, image, scale = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen), torch.tensor(3.0)
    out = contrastive_loss(text, image, scale)
    t = text / text.norm(dim=1, keepdim=True)
    v = image / image.norm(dim=1, keepdim=True)
    sim = 3.0 * v @ t.T  # (image, text)
    i2t = -(sim.diag() - sim.exp().sum(dim=1).log()).mean()
    t2i = -(sim.diag() - sim.exp().sum(dim=0).log()).mean()
    torch.testing.assert_close(out.loss, (i2t + t2i) / 2)
    torch.testing.assert_close(out.logits_per_image, sim)
    torch.testing.assert_close(out.logits_per_text, sim.T)
    torch.testing.assert_close(contrastive_loss(image, text, scale).loss, out.loss)


def test_contrastive_loss_is_small_for_perfect_alignment_at_high_scale() -> None:
    emb = torch.eye(5)
    out = contrastive_loss(emb, 2 * emb, torch.tensor(100.0))
    assert out.loss.item() < 1e-6
    assert out.t2i_acc1.item() == 1.0 and out.i2t_acc1.item() == 1.0


def _global_problem():
    gen = torch.Generator().manual_seed(11)
    return torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen), torch.tensor(4.0)


def _loss_and_grads(text, image, scale):
    text, image, scale = (x.clone().requires_grad_(True) for x in (text, image, scale))
    out = contrastive_loss(text, image, scale)
    out.loss.backward()
    return {
        "loss": out.loss.detach(),
        "text": text.grad,
        "image": image.grad,
        "scale": scale.grad,
        "logits": out.logits_per_image.detach(),
    }


def _distributed_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    """One gloo rank: contrastive loss on its slice of the global problem; saves loss and grads."""
    import torch.distributed as dist

    loopback = next(name for _, name in socket.if_nameindex() if name.startswith("lo"))
    os.environ["GLOO_SOCKET_IFNAME"] = loopback  # keep gloo's data sockets on the loopback interface
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        text, image, scale = _global_problem()
        b = text.shape[0] // world_size
        local = slice(rank * b, (rank + 1) * b)
        torch.save(_loss_and_grads(text[local], image[local], scale), Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_contrastive_loss_on_two_gloo_ranks_equals_the_single_process_global_batch(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    text, image, scale = _global_problem()
    ref = _loss_and_grads(text, image, scale)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        local = slice(rank * 3, (rank + 1) * 3)
        torch.testing.assert_close(got["loss"], ref["loss"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["logits"], ref["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["text"], ref["text"][local], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["image"], ref["image"][local], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["scale"], ref["scale"], atol=1e-5, rtol=0)


# -- generation loss ---------------------------------------------------------------------------------------


def test_generation_loss_l2_is_the_unsquared_norm_and_mse_the_mean_square() -> None:
    pred = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])  # (1, 2, 2): token 0 is a 3-4-5 triangle, token 1 exact
    target = torch.zeros(1, 2, 2)
    assert generation_loss(pred[:, :1], target[:, :1], "l2").item() == 5.0
    assert generation_loss(pred[:, :1], target[:, :1], "mse").item() == 12.5
    assert generation_loss(pred, target, "l2").item() == 2.5
    assert generation_loss(pred, target, "mse").item() == 6.25
    with pytest.raises(ValueError, match="kind"):
        generation_loss(pred, target, "l1")  # type: ignore[arg-type]


def test_generation_loss_token_weights_reweight_positions() -> None:
    pred = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]])  # per-token l2: 5, 0, 10
    target = torch.zeros(1, 3, 2)
    assert generation_loss(pred, target, token_weights=torch.ones(3)).item() == 5.0
    assert generation_loss(pred, target, token_weights=torch.tensor([1.0, 1.0, 0.0])).item() == 2.5
    assert math.isclose(generation_loss(pred, target, token_weights=torch.tensor([1.0, 1.0, 0.5])).item(), 10 / 2.5)


def test_generation_loss_runs_in_fp32_for_half_inputs() -> None:
    pred = torch.full((1, 1, 4), 300.0, dtype=torch.float16)  # squares overflow fp16 (max 65504)
    target = torch.zeros(1, 1, 4, dtype=torch.bfloat16)
    loss = generation_loss(pred, target, "mse")
    assert loss.dtype == torch.float32 and loss.item() == 90000.0


def test_sd_token_weights_downweight_positions_after_eos() -> None:
    expected = [[1, 1, 0.1, 0.1, 0.1], [1, 1, 1, 1, 0.1]]
    got = sd_token_weights(torch.tensor([2, 4]), 5, pad_weight=0.1)
    torch.testing.assert_close(got, torch.tensor(expected))
    EOS = 49407
    ids = torch.tensor([[49406, EOS, EOS, EOS, EOS], [49406, 7, 8, EOS, EOS]])
    torch.testing.assert_close(sd_token_weights(ids, 5, 0.1, eos_token_id=EOS), torch.tensor(expected))
    with pytest.raises(ValueError, match="eos_token_id"):
        sd_token_weights(ids, 5, 0.1)
    with pytest.raises(ValueError, match="pad_weight"):
        sd_token_weights(torch.tensor([2]), 5, 2.0)


# -- combine ---------------------------------------------------------------------------------------------


def test_combine_weights_lp_by_the_mean_of_ret_and_gen_scales() -> None:
    cap, lp, ret, gen = (torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0))
    assert combine(cap, lp, ret, gen).total.item() == 10.0
    scales = LossScales(cap_loss_scale=2.0, ret_loss_scale=1.0, gen_loss_scale=0.0)
    losses = combine(cap, lp, ret, gen, scales, metrics={"acc": torch.tensor(0.5)})
    assert losses.total.item() == 2 * 1 + 0.5 * 2 + 3
    assert losses.scalars() == {
        "loss/cap": 1.0,
        "loss/lp": 2.0,
        "loss/ret": 3.0,
        "loss/gen": 4.0,
        "loss/total": 6.0,
        "acc": 0.5,
    }
    assert combine(None, lp, None, None).total.item() == 2.0
    with pytest.raises(ValueError, match="every loss is None"):
        combine(None, None, None, None)
    with pytest.raises(ValueError, match="gen_loss_scale=-1"):
        LossScales(gen_loss_scale=-1.0)
