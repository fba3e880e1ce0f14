"""Greedy image captioning with the trained input projection, and corpus BLEU on validation captions.

GILL's captioning mode (paper section 3.1) feeds ``k`` soft visual tokens then BOS to the frozen LM. The official
validation (docs/official-gill.md §2.7) greedily captions every validation image for 32 new tokens, never emits an
[IMG] token, cuts the text at its first "." past the fifth character, and reports corpus BLEU-1..4 (torchmetrics
``BLEUScore``) against the one reference caption. gill does the same with two differences, both in
docs/official-differences.md: decoding starts right after BOS, the layout training uses (the official prepends
"A picture of", which training never sees), and a caption stops at the LM's end-of-text token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics.text import BLEUScore

if TYPE_CHECKING:
    from gill.model import GILLModel

MAX_NEW_TOKENS = 32
"""New tokens per caption (official: 32)."""
BLEU_ORDERS = (1, 2, 3, 4)


@torch.no_grad()
def greedy_captions(
    model: GILLModel, vision_features: torch.Tensor, tokenizer: Any, max_new_tokens: int = MAX_NEW_TOKENS
) -> list[str]:
    """(B, Dv) CLIP features -> B greedy captions (KV cache, [IMG] never emitted, stop at end-of-text)."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    batch = vision_features.shape[0]
    device = vision_features.device
    visual = model.encode_images(vision_features)  # (B, k, D)
    bos_embed = model.embed_tokens(torch.full((batch, 1), bos, dtype=torch.long, device=device))  # (B, 1, D)
    embeds = torch.cat([visual, bos_embed.to(visual.dtype)], dim=1)  # (B, k + 1, D)
    mask = torch.ones(batch, embeds.shape[1], dtype=torch.long, device=device)
    out = model.forward_lm(embeds, mask, use_cache=True)
    tokens = torch.empty(batch, 0, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()  # (B, V)
        logits[:, model.first_img_id :] = float("-inf")  # no [IMG] token (official: min_word_tokens = 32)
        next_ids = logits.argmax(dim=-1)  # (B,)
        if eos is not None:
            next_ids = torch.where(done, eos, next_ids)
            done |= next_ids == eos
        tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model.forward_lm(
            model.embed_tokens(next_ids[:, None]), mask, past_key_values=out.past_key_values, use_cache=True
        )
    return [truncate_caption(text) for text in tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)]


def truncate_caption(text: str) -> str:
    """The official cut: at the first "." when it lies past the fifth character; surrounding space stripped."""
    text = text.strip()
    stop = text.find(".")
    return text[:stop].strip() if stop > 5 else text


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 of ``predictions`` against one reference each (torchmetrics ``BLEUScore``)."""
    if len(predictions) != len(references):
        raise ValueError(f"corpus_bleu: {len(predictions)} predictions but {len(references)} references")
    targets = [[ref] for ref in references]
    return {f"bleu{n}": float(BLEUScore(n_gram=n)(list(predictions), targets)) for n in BLEU_ORDERS}


__all__ = ["corpus_bleu", "greedy_captions", "truncate_caption"]
