"""GILL's training objectives as pure, vectorised tensor functions (paper section 3; docs/official-gill.md
§1.6 and 2.2-2.4).

Everything here works on tensors and token ids only (no model, no tokenizer), so the model and the trainer
can call it and the tests can check it against plain Python oracles:

* label construction: :func:`captioning_labels` (paper section 3.1, the captioning loss l_c),
  :func:`lp_labels` (section 3.2, eq. 2: the [IMG]-prediction loss l_p) and :func:`img_positions`;
* the concat-captions augmentation (FROMAGe-style pseudo-interleaving, official §2.3):
  :func:`draw_concat`, :func:`second_bos_mask`, :func:`captioning_concat_drop_mask`, :func:`concat_pairs`;
* losses: :func:`lm_loss` / :func:`token_accuracy` (l_c and l_p), :func:`contrastive_loss` (section 3.3,
  the retrieval InfoNCE loss l_r), :func:`generation_loss` / :func:`sd_token_weights` (section 3.2, eq. 3:
  the generation loss l_gen) and :func:`combine` (section 3.4: the total).

None of these functions loops in Python over batch rows or sequence positions (the official code does,
official §8.7); masks come from ``cumsum``, rearrangements from ``index_put``/``gather``.
Three official defects are fixed, each behind an explicit option: the generation loss type (section 8
item 3), the missing LM loss on the second concatenated segment (item 5) and the padding weighting of the
77 SD tokens (item 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label value ignored by the LM loss (the HF / PyTorch convention)."""


# -- label construction (official §1.6) -------------------------------------------------------------------


def _masked_from_first(input_ids: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """``input_ids`` with every position from the first True of ``stop`` onward (per row) set to -100."""
    after_stop = stop.long().cumsum(dim=1) > 0  # (B, T)
    return input_ids.masked_fill(after_stop, IGNORE_INDEX)


def _is_any(input_ids: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """(B, T) bool: the position holds one of ``token_ids``."""
    ids = torch.as_tensor(list(token_ids), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, ids)


def captioning_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, img_token_ids: Sequence[int], n_prefix: int
) -> torch.Tensor:
    """Labels of the captioning mode: image-to-text LM loss l_c (paper section 3.1, official §1.6).

    The LM input is ``[n_prefix visual tokens][BOS caption... [IMG0..n-1] pad...]``. Visual positions get
    -100; text labels are the ids, masked from the first pad or the first [IMG] token onward. The BOS label is
    kept, so the last visual position learns to predict BOS, as the official code does.

    Args:
        input_ids: (B, T) right-padded ids ``[BOS caption... [IMG]s pad...]``.
        attention_mask: (B, T) 1 on real tokens, 0 on padding.
        img_token_ids: the n [IMG] ids, [IMG0] first.
        n_prefix: number of visual soft tokens placed before the text.

    Returns:
        (B, n_prefix + T) int64 labels (not yet shifted; :func:`lm_loss` shifts).
    """
    stop = (attention_mask == 0) | _is_any(input_ids, img_token_ids)  # (B, T)
    text = _masked_from_first(input_ids.long(), stop)  # (B, T)
    prefix = text.new_full((input_ids.shape[0], n_prefix), IGNORE_INDEX)  # (B, n_prefix)
    return torch.cat([prefix, text], dim=1)


def lp_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, img_token_ids: Sequence[int]) -> torch.Tensor:
    """Labels of the retrieval/generation modes: the paper's l_p (section 3.2, eq. 2; official §1.6).

    Masked from the first pad and from the first [IMG1..n-1] onward, so the caption tokens *and* [IMG0]
    (predicted after the caption) carry loss; [IMG1..n-1] are always fed, never predicted.

    Args:
        input_ids: (B, T) right-padded ids ``[BOS caption... [IMG]s pad...]``.
        attention_mask: (B, T).
        img_token_ids: the n [IMG] ids, [IMG0] first.

    Returns:
        (B, T) int64 labels.
    """
    stop = (attention_mask == 0) | _is_any(input_ids, list(img_token_ids)[1:])  # (B, T)
    return _masked_from_first(input_ids.long(), stop)


def img_positions(input_ids: torch.Tensor, img_token_ids: Sequence[int]) -> torch.Tensor:
    """Column of each [IMG_i] in each row, for extracting the [IMG] hidden states (official §1.4).

    Args:
        input_ids: (B, T) ids; every row must hold ``[IMG0] .. [IMG{n-1}]`` as one consecutive run.
        img_token_ids: the n [IMG] ids, [IMG0] first.

    Returns:
        (B, n) int64 positions (the first occurrence of each [IMG_i]).

    Raises:
        ValueError: naming every row that lacks the full, ordered, consecutive run.
    """
    ids = torch.as_tensor(list(img_token_ids), dtype=input_ids.dtype, device=input_ids.device)  # (n,)
    hits = input_ids.unsqueeze(-1) == ids  # (B, T, n)
    positions = hits.long().argmax(dim=1)  # (B, n) first hit (0 when absent)
    expected = positions[:, :1] + torch.arange(len(ids), device=input_ids.device)  # (B, n)
    ok = hits.any(dim=1).all(dim=1) & (positions == expected).all(dim=1)  # (B,)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().tolist()
        raise ValueError(
            f"img_positions: rows {bad} lack the full run of [IMG] ids {ids.tolist()} in order; every LM row "
            "must hold [IMG0]..[IMG{n-1}] consecutively (the reader overwrites truncated tails, official §2.2)"
        )
    return positions


# -- concat-captions augmentation (official §2.3) ---------------------------------------------------------


def draw_concat(generator: torch.Generator, p: float = 0.5) -> bool:
    """One coin flip: concatenate caption pairs in this mode of this step (official p = 0.5, official §2.3).

    The trainer draws once per mode with its own seeded generator, so resumed runs replay the same draws.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"draw_concat: p must be a probability in [0, 1], got {p!r}")
    return bool(torch.rand((), generator=generator).item() < p)


def second_bos_mask(input_ids: torch.Tensor, bos_token_id: int, n_prefix: int = 0) -> torch.Tensor:
    """``drop_mask`` for :func:`concat_pairs` that removes the BOS of every second (odd-row) element.

    The official concatenation keeps one BOS per sequence (official §2.3). The first BOS of each odd row is
    marked; with a visual prefix (captioning mode) the mask is shifted right by ``n_prefix`` columns.

    Args:
        input_ids: (B, T) ids.
        bos_token_id: the BOS id.
        n_prefix: visual tokens in front of the text (their columns are never dropped).

    Returns:
        (B, n_prefix + T) bool.

    Raises:
        ValueError: naming the odd rows that hold no BOS.
    """
    is_bos = input_ids == bos_token_id  # (B, T)
    first_bos = is_bos & (is_bos.long().cumsum(dim=1) == 1)  # (B, T) only the first one per row
    odd = (torch.arange(input_ids.shape[0], device=input_ids.device) % 2 == 1).unsqueeze(1)  # (B, 1)
    missing = odd.squeeze(1) & ~is_bos.any(dim=1)  # (B,)
    if bool(missing.any()):
        raise ValueError(
            f"second_bos_mask: rows {missing.nonzero().flatten().tolist()} hold no BOS id {bos_token_id}; "
            "tokenize captions with add_special_tokens=True"
        )
    prefix = torch.zeros(input_ids.shape[0], n_prefix, dtype=torch.bool, device=input_ids.device)
    return torch.cat([prefix, first_bos & odd], dim=1)


def captioning_concat_drop_mask(
    input_ids: torch.Tensor, bos_token_id: int, img_token_ids: Sequence[int], n_prefix: int
) -> torch.Tensor:
    """``drop_mask`` for :func:`concat_pairs` in captioning mode: the second BOS and every [IMG] token.

    The official captioning pass cuts each segment at its first pad or [IMG] token before concatenating, giving
    ``[v1 BOS c1][v2 c2]`` (official §2.3): the [IMG] blocks of both captions are not between the segments. (The
    official code moves them, with the pads, behind both segments, where the causal LM never lets them influence a
    caption token, so dropping them gives the same loss.)

    Args:
        input_ids: (B, T) ids ``[BOS caption [IMG]s pad]``.
        bos_token_id: the BOS id.
        img_token_ids: the n [IMG] ids.
        n_prefix: visual tokens in front of the text (never dropped).

    Returns:
        (B, n_prefix + T) bool.
    """
    drop = second_bos_mask(input_ids, bos_token_id, n_prefix)  # (B, n_prefix + T)
    drop[:, n_prefix:] |= _is_any(input_ids, img_token_ids)
    return drop


@dataclass(kw_only=True)
class ConcatResult:
    """Output of :func:`concat_pairs`: B/2 concatenated rows of width W (2L, or trimmed)."""

    embeds: torch.Tensor
    """(B/2, W, D) input embeddings; padding slots are zeros."""
    labels: torch.Tensor
    """(B/2, W) int64 labels; padding slots are -100."""
    attention_mask: torch.Tensor
    """(B/2, W) 1 on content, 0 on padding (same dtype as the input mask)."""
    positions: torch.Tensor | None
    """(B, n) where each ORIGINAL row's [IMG] block landed in output row ``r // 2``; None if none were given."""


def _check_concat_inputs(
    embeds: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor, drop_mask: torch.Tensor | None
) -> None:
    """Raise one ValueError listing every shape problem (odd batch included)."""
    B, L = embeds.shape[:2]
    problems = []
    if B % 2:
        problems.append(f"batch size B={B} is odd; concat-captions merges pairs (2i, 2i+1) and needs an even B")
    for name, t in (("labels", labels), ("attention_mask", attention_mask), ("drop_mask", drop_mask)):
        if t is not None and tuple(t.shape) != (B, L):
            problems.append(f"{name} has shape {tuple(t.shape)}, expected (B, L) = {(B, L)} like embeds")
    if problems:
        raise ValueError("concat_pairs: " + "; ".join(problems))


def _concat_slots(keep: torch.Tensor) -> torch.Tensor:
    """(B, L) destination column of every source position in output row ``r // 2`` (valid where ``keep``).

    Row 2i's kept tokens go to columns 0..c_{2i}-1, row 2i+1's to c_{2i}..c_{2i}+c_{2i+1}-1.
    """
    within = keep.long().cumsum(dim=1) - 1  # (B, L) rank among the row's kept tokens
    counts_even = keep[0::2].long().sum(dim=1)  # (B/2,)
    offset = torch.stack([torch.zeros_like(counts_even), counts_even], dim=1).reshape(-1)  # (B,)
    return offset.unsqueeze(1) + within


def _moved_positions(keep: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, n) new columns of the given source positions; they must point at kept tokens."""
    positions = positions.long()
    kept = keep.gather(1, positions)  # (B, n)
    if not bool(kept.all()):
        bad = (~kept.all(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"concat_pairs: positions of rows {bad} point at padding or dropped tokens")
    return slots.gather(1, positions)


def concat_pairs(
    embeds: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    drop_mask: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    *,
    second_segment_loss: bool = True,
    trim: bool = True,
) -> ConcatResult:
    """Concatenate examples (2i, 2i+1) into one sequence: FROMAGe-style pseudo-interleaving (official §2.3).

    Output row i = [content of row 2i] + [content of row 2i+1] + padding, where content is
    ``attention_mask == 1 and not drop_mask`` (use :func:`second_bos_mask` to drop the second BOS, as the
    official code does). The LM batch halves, but ``positions`` keeps all B [IMG] blocks, so the caller still
    extracts B sets of [IMG] hidden states in the original order (official behaviour).

    Args:
        embeds: (B, L, D) input embeddings (gradients flow back through the rearrangement).
        labels: (B, L) per-row labels (e.g. from :func:`lp_labels` or :func:`captioning_labels`).
        attention_mask: (B, L) 1 on real tokens.
        drop_mask: (B, L) bool, True on real tokens to remove (None = drop nothing).
        positions: (B, n) columns of each row's [IMG] tokens (e.g. from :func:`img_positions`), or None.
        second_segment_loss: keep the second segment's labels. The official code computes the l_p mask on the
            concatenated row ("from the first [IMG1..]"), so cap2 and its [IMG0] get no LM loss (official §8
            item 5); True fixes this, False reproduces it (for the retrieval/generation modes; the official
            captioning mode keeps cap2's labels, i.e. True).
        trim: cut the width to the longest concatenated row instead of 2L.

    Returns:
        :class:`ConcatResult` with B/2 rows.

    Raises:
        ValueError: for an odd B, mismatched shapes, or positions on tokens that are not kept.
    """
    _check_concat_inputs(embeds, labels, attention_mask, drop_mask)
    B, L, D = embeds.shape
    keep = attention_mask.bool() if drop_mask is None else attention_mask.bool() & ~drop_mask.bool()  # (B, L)
    slots = _concat_slots(keep)  # (B, L)
    width = max(int(keep.sum(dim=1).view(-1, 2).sum(dim=1).max()), 1) if trim and B else 2 * L
    rows = (torch.arange(B, device=embeds.device) // 2).unsqueeze(1)  # (B, 1)
    dest = (rows * width + slots)[keep]  # (N,) flat output slot of every kept token, row-major source order
    if not second_segment_loss:
        odd = (torch.arange(B, device=labels.device) % 2 == 1).unsqueeze(1)  # (B, 1)
        labels = labels.masked_fill(odd, IGNORE_INDEX)
    out_embeds = embeds.new_zeros(B // 2 * width, D).index_put((dest,), embeds[keep])  # (B/2*W, D)
    out_labels = labels.new_full((B // 2 * width,), IGNORE_INDEX).index_put((dest,), labels[keep])
    ones = torch.ones_like(dest, dtype=attention_mask.dtype)  # (N,)
    out_mask = attention_mask.new_zeros(B // 2 * width).index_put((dest,), ones)
    return ConcatResult(
        embeds=out_embeds.view(B // 2, width, D),
        labels=out_labels.view(B // 2, width),
        attention_mask=out_mask.view(B // 2, width),
        positions=None if positions is None else _moved_positions(keep, slots, positions),
    )


# -- language-model losses (paper section 3.1 l_c, section 3.2 eq. 2 l_p) ---------------------------------


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with label t+1 (HF causal-LM convention): (N, V) and (N,)."""
    logits = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B*(S-1), V)
    labels = labels[:, 1:].reshape(-1)  # (B*(S-1),)
    return logits, labels


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100, with the internal shift (as HF's LM loss).

    Used for l_c (paper section 3.1) and l_p (section 3.2, eq. 2). Computed in fp32. With no labelled token
    at all it returns 0 (with a graph) instead of HF's NaN.

    Args:
        logits: (B, S, V).
        labels: (B, S) unshifted labels, -100 = ignore.

    Returns:
        () scalar.
    """
    flat_logits, flat_labels = _shift(logits, labels)
    total = F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (flat_labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


@torch.no_grad()
def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: Sequence[int] = (1, 5)) -> dict[str, torch.Tensor]:
    """Top-k next-token accuracy over labels != -100 (the official ``seq_top{k}_acc``), with the shift.

    Args:
        logits: (B, S, V).
        labels: (B, S) unshifted labels.
        k: the k values.

    Returns:
        ``{"top1": (), "top5": (), ...}`` fractions in [0, 1] (0 when no token is labelled).
    """
    flat_logits, flat_labels = _shift(logits, labels)
    valid = flat_labels != IGNORE_INDEX  # (N,)
    kmax = min(max(k), flat_logits.shape[-1])
    top = flat_logits.topk(kmax, dim=-1).indices  # (N, kmax)
    hit = top == flat_labels.unsqueeze(1)  # (N, kmax)
    count = valid.sum().clamp(min=1)
    return {f"top{kk}": (hit[:, :kk].any(dim=1) & valid).sum().float() / count for kk in k}


# -- retrieval: contrastive loss l_r (paper section 3.3) --------------------------------------------------


@dataclass(kw_only=True)
class ContrastiveOutput:
    """Output of :func:`contrastive_loss` over the (global) batch of G = world_size * B pairs."""

    loss: torch.Tensor
    """() mean of the text-to-image and image-to-text cross-entropies."""
    logits_per_text: torch.Tensor
    """(G, G) scaled cosine similarities, text rows."""
    logits_per_image: torch.Tensor
    """(G, G) its transpose, image rows."""
    t2i_acc1: torch.Tensor
    """() fraction of texts whose best image is their own."""
    i2t_acc1: torch.Tensor
    """() fraction of images whose best text is their own."""


def _distributed_world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_with_local_grad(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """(world_size * B, R) all ranks' rows; the local slice is ``x`` itself so gradients reach it.

    Every rank must pass the same B (``all_gather`` needs equal shapes).
    """
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def contrastive_loss(
    text_emb: torch.Tensor, image_emb: torch.Tensor, scale: torch.Tensor, gather: bool = True
) -> ContrastiveOutput:
    """Symmetric InfoNCE between text and image embeddings: l_r (paper section 3.3, official §2.4).

    Both sides are L2-normalised; ``logits_per_image = scale * img @ txt.T``; the loss is cross-entropy with
    the diagonal as target, averaged over the two directions. Computed in fp32.

    Under ``torch.distributed`` (initialised, world_size > 1) with ``gather=True`` both sides are all-gathered,
    as the official code does, so the negatives are the GLOBAL batch; the local slice is the grad-carrying
    tensor. Every rank forms the full (G, G) logits with targets ``arange(G)`` (rank r's own rows are rows
    r*B..(r+1)*B-1, i.e. targets offset by r*B), so each rank's loss equals the single-process loss over the
    concatenated global batch, and the gradient reaching its local embeddings equals that single-process
    gradient for its slice.

    Args:
        text_emb: (B, R) text-side embeddings (from h([IMG0])).
        image_emb: (B, R) image-side embeddings (from the CLIP pooler).
        scale: () multiplicative logit scale, i.e. ``exp(logit_scale)`` (clamped by the caller if wanted).
        gather: all-gather negatives across ranks when distributed.

    Returns:
        :class:`ContrastiveOutput`.
    """
    text = F.normalize(text_emb.float(), dim=-1)  # (B, R)
    image = F.normalize(image_emb.float(), dim=-1)  # (B, R)
    rank, world_size = _distributed_world()
    if gather and world_size > 1:
        text = _gather_with_local_grad(text, rank, world_size)  # (G, R)
        image = _gather_with_local_grad(image, rank, world_size)  # (G, R)
    logits_per_image = scale.float() * image @ text.T  # (G, G)
    logits_per_text = logits_per_image.T  # (G, G)
    targets = torch.arange(text.shape[0], device=text.device)  # (G,)
    loss = (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_image, targets)) / 2
    with torch.no_grad():
        t2i_acc1 = (logits_per_text.argmax(dim=1) == targets).float().mean()
        i2t_acc1 = (logits_per_image.argmax(dim=1) == targets).float().mean()
    return ContrastiveOutput(
        loss=loss,
        logits_per_text=logits_per_text,
        logits_per_image=logits_per_image,
        t2i_acc1=t2i_acc1,
        i2t_acc1=i2t_acc1,
    )


# -- generation: l_gen (paper section 3.2, eq. 3) ----------------------------------------------------------


def generation_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: Literal["l2", "mse"] = "l2",
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance between the GILLMapper output and the SD text-encoder output: l_gen (paper eq. 3).

    ``kind="l2"`` is the official ``losses.l2_loss``: the per-token Euclidean norm ||pred_t - target_t||_2
    (NOT squared) averaged over tokens and batch (official §2.4; the paper calls it an MSE/l2 loss, section 8
    item 3). ``kind="mse"`` is the mean squared error (squared difference averaged over the Dt dims, then over
    tokens and batch). Computed in fp32 even for fp16/bf16 inputs.

    Args:
        pred: (B, K, Dt) mapped [IMG] embeddings.
        target: (B, K, Dt) SD text-encoder ``last_hidden_state`` of the caption (padded to K = 77).
        kind: "l2" (official) or "mse".
        token_weights: (K,) or (B, K) non-negative weight of each SD token position, e.g. from
            :func:`sd_token_weights`; the loss is the weighted mean ``sum(w * d) / sum(w)``. None = all K
            positions count equally (official, padding included).

    Returns:
        () scalar.
    """
    diff = pred.float() - target.float()  # (B, K, Dt)
    if kind == "l2":
        per_token = diff.norm(dim=-1)  # (B, K)
    elif kind == "mse":
        per_token = diff.pow(2).mean(dim=-1)  # (B, K)
    else:
        raise ValueError(f"generation_loss: kind must be 'l2' or 'mse', got {kind!r}")
    if token_weights is None:
        return per_token.mean()
    weights = token_weights.to(per_token).expand_as(per_token)  # (B, K)
    return (weights * per_token).sum() / weights.sum().clamp(min=torch.finfo(torch.float32).tiny)


def sd_token_weights(
    lengths_or_ids: torch.Tensor, num_tokens: int, pad_weight: float, eos_token_id: int | None = None
) -> torch.Tensor:
    """Per-example weights of the K SD token positions that downweight the padding after the caption's EOS.

    The SD-v1.5 text encoder always outputs K = 77 states; for a 10-token caption about 85% of them sit after
    EOS. The official loss weights all 77 equally, so most of l_gen is spent on those padding states. They are
    not worthless (SD's cross-attention attends to all 77 and, with the causal text encoder, each one has seen
    the whole caption), hence a weight rather than a cut: positions up to and including EOS get 1, the later
    ones ``pad_weight`` (1.0 = official, 0.0 = caption tokens only).

    Args:
        lengths_or_ids: (B,) token counts including BOS and EOS, or (B, K') SD input ids, whose length is the
            first ``eos_token_id`` + 1 (SD v1.5 pads with the EOS id, so the first one is the real EOS).
        num_tokens: K.
        pad_weight: weight in [0, 1] of positions after EOS.
        eos_token_id: the SD tokenizer's EOS id; required when ids are given.

    Returns:
        (B, K) float32 weights for :func:`generation_loss`.
    """
    if not 0.0 <= pad_weight <= 1.0:
        raise ValueError(f"sd_token_weights: pad_weight must be in [0, 1], got {pad_weight!r}")
    lengths = _sd_lengths(lengths_or_ids, eos_token_id).clamp(min=1, max=num_tokens)  # (B,)
    positions = torch.arange(num_tokens, device=lengths.device)  # (K,)
    in_caption = positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, K)
    return torch.where(in_caption, 1.0, pad_weight).float()


def _sd_lengths(lengths_or_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """(B,) lengths from lengths (returned as is) or from SD input ids (first EOS + 1; K' if none)."""
    if lengths_or_ids.dim() == 1:
        return lengths_or_ids.long()
    if eos_token_id is None:
        raise ValueError("sd_token_weights: pass eos_token_id when giving (B, K) SD input ids instead of lengths")
    is_eos = lengths_or_ids == eos_token_id  # (B, K')
    first = torch.where(is_eos.any(dim=1), is_eos.long().argmax(dim=1), lengths_or_ids.shape[1] - 1)  # (B,)
    return first + 1


# -- the total (paper section 3.4) -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LossScales:
    """Weights of the GILL losses (official ``--cap-loss-scale`` etc., all 1.0 by default; official §2.4).

    The official code computes l_p twice per step, in retrieval mode (x ``ret_loss_scale`` x 0.5) and in
    generation mode (x ``gen_loss_scale`` x 0.5), with independent concat draws. By default we compute it once with
    weight :attr:`lp_weight` = 0.5 * (ret + gen), which is the same objective in expectation and costs one LM pass
    less; ``train.separate_mode_passes`` runs the two passes and passes their scale-weighted mean as l_p.
    """

    cap_loss_scale: float = 1.0
    """Weight of the captioning loss l_c."""
    ret_loss_scale: float = 1.0
    """Weight of the contrastive loss l_r (and half of l_p's weight)."""
    gen_loss_scale: float = 1.0
    """Weight of the generation loss l_gen (and half of l_p's weight)."""

    def __post_init__(self) -> None:
        bad = [f"{k}={v!r}" for k, v in vars(self).items() if not v >= 0.0]
        if bad:
            raise ValueError(f"LossScales: scales must be >= 0, got {', '.join(bad)}")

    @property
    def lp_weight(self) -> float:
        """Weight of the single l_p term: 0.5 * (ret_loss_scale + gen_loss_scale)."""
        return 0.5 * (self.ret_loss_scale + self.gen_loss_scale)


@dataclass(kw_only=True)
class GILLLosses:
    """The unscaled GILL losses of one step, their weighted total and extra metrics."""

    cap: torch.Tensor | None
    """() captioning LM loss l_c (None if the mode did not run)."""
    lp: torch.Tensor | None
    """() [IMG]-prediction LM loss l_p."""
    ret: torch.Tensor | None
    """() contrastive loss l_r."""
    gen: torch.Tensor | None
    """() generation loss l_gen."""
    total: torch.Tensor
    """() the weighted sum to backpropagate."""
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached extra scalars (accuracies, norms, ...)."""

    def scalars(self) -> dict[str, float]:
        """Every loss and metric as a Python float, for logging (synchronises with the device)."""
        named = {"cap": self.cap, "lp": self.lp, "ret": self.ret, "gen": self.gen, "total": self.total}
        out = {f"loss/{k}": float(v.detach()) for k, v in named.items() if v is not None}
        out.update({k: float(v.detach()) for k, v in self.metrics.items()})
        return out


def combine(
    cap: torch.Tensor | None,
    lp: torch.Tensor | None,
    ret: torch.Tensor | None,
    gen: torch.Tensor | None,
    scales: LossScales | None = None,
    metrics: Mapping[str, torch.Tensor] | None = None,
) -> GILLLosses:
    """Total loss ``cap_scale*l_c + lp_weight*l_p + ret_scale*l_r + gen_scale*l_gen`` (paper section 3.4).

    See :class:`LossScales` for why l_p is weighted 0.5 * (ret + gen). A None component is left out.

    Raises:
        ValueError: if every component is None.
    """
    scales = scales or LossScales()
    terms = [
        (cap, scales.cap_loss_scale),
        (lp, scales.lp_weight),
        (ret, scales.ret_loss_scale),
        (gen, scales.gen_loss_scale),
    ]
    present = [w * loss for loss, w in terms if loss is not None]
    if not present:
        raise ValueError("combine: every loss is None; at least one of cap, lp, ret, gen is needed")
    total = torch.stack(present).sum()
    return GILLLosses(cap=cap, lp=lp, ret=ret, gen=gen, total=total, metrics=dict(metrics or {}))
