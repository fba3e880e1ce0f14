"""Validation metrics the trainer computes: recall@k of the contrastive retrieval heads (paper section 3.2).

Recall@k as in the paper's retrieval results and GILL's validation: pair i is a hit for text-to-image retrieval
when image i ranks within the top k of text i's similarities over the whole pool, and symmetrically for
image-to-text. Ties count against the true pair (a pessimistic, deterministic rank). The benchmark scoring
(:mod:`eval.metrics`) uses the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def true_pair_ranks(similarity: torch.Tensor) -> torch.Tensor:
    """0-based rank of the diagonal entry in each row of a square similarity matrix (ties rank it last)."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got shape {tuple(similarity.shape)}")
    diagonal = similarity.diagonal().unsqueeze(1)  # (N, 1)
    return (similarity >= diagonal).sum(dim=1) - 1  # (N,) entries scoring at least as high, minus itself


def retrieval_recall(
    text_emb: torch.Tensor, image_emb: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways for aligned (N, R) text and image embeddings (cosine similarity, pool = all N).

    Returns:
        ``{"t2i_r1": ..., "i2t_r1": ..., "t2i_r5": ...}`` as fractions in [0, 1].
    """
    if text_emb.shape != image_emb.shape:
        raise ValueError(
            f"text and image embeddings must match, got {tuple(text_emb.shape)} and {tuple(image_emb.shape)}"
        )
    text = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    image = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    similarity = text @ image.T  # (N texts, N images)
    ranks = {"t2i": true_pair_ranks(similarity), "i2t": true_pair_ranks(similarity.T)}
    return {f"{d}_r{k}": float((r < k).float().mean()) for k in ks for d, r in ranks.items()}
