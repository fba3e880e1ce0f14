"""Pure metric functions over tensors and arrays (no IO, no models): recall@k, cosine, bootstrap CIs, FID.

Recall@k as in the paper's retrieval results and GILL's validation (docs/official-gill.md §2.7): pair i is a hit for
text-to-image retrieval when image i ranks within the top k of text i's similarities over the whole pool,
and symmetrically for image-to-text. Ties count against the true pair (a pessimistic, deterministic rank).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gill.errors import InputError
from gill.validation import retrieval_recall, true_pair_ranks

__all__ = ["retrieval_recall", "true_pair_ranks"]  # the library's validation recall, also used by the scoring


# --- benchmark metrics (the "Benchmarks into DuckDB" issue): per-pair cosine, ranks, bootstrap CIs, FID -------


def cosine_similarity_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of each row pair of two (N, D) tensors -> (N,) (both sides L2-normalised first).

    The CLIP-similarity metric of the official ``compute_clip_similarity_vist.py`` (official §6.1): the cosine
    between the projected CLIP features of a generated image and of its ground-truth image, one score per pair.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(
            "cosine_similarity_rows needs two feature matrices of the same (N, D) shape",
            [f"a has shape {tuple(a.shape)}, b has shape {tuple(b.shape)}"],
            hint="pass one row per pair: row i of a is compared with row i of b",
        )
    a_unit = torch.nn.functional.normalize(a.float(), dim=-1)
    b_unit = torch.nn.functional.normalize(b.float(), dim=-1)
    return (a_unit * b_unit).sum(dim=-1)


@dataclass(frozen=True)
class ConfidenceInterval:
    """A two-sided interval for a statistic, e.g. from :func:`bootstrap_ci`."""

    low: float
    """Lower bound."""
    high: float
    """Upper bound."""
    confidence: float
    """Nominal coverage in (0, 1), e.g. 0.95."""


def _check_bootstrap_args(confidence: float, n_boot: int) -> None:
    problems = []
    if not 0.0 < confidence < 1.0:
        problems.append(f"confidence: must be in (0, 1), got {confidence!r}")
    if n_boot < 1:
        problems.append(f"n_boot: must be >= 1, got {n_boot!r}")
    if problems:
        raise InputError("invalid bootstrap settings", problems, hint="e.g. confidence=0.95, n_boot=1000")


def _percentile_interval(stats: np.ndarray, confidence: float) -> ConfidenceInterval:
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return ConfidenceInterval(low=float(low), high=float(high), confidence=confidence)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    statistic: Callable[..., np.ndarray] = np.mean,
) -> ConfidenceInterval:
    """Percentile-bootstrap interval of ``statistic`` over per-example scores (Efron & Tibshirani 1993, ch. 13).

    The paper reports ``±`` values that the official code never computes (official §6.3); this project reports
    the variance across examples as a bootstrap interval instead. All ``n_boot`` resamples are drawn at once as
    an ``(n_boot, n)`` index matrix from ``numpy.random.default_rng(seed)``, so a seed gives the same interval.

    Args:
        values: one score per example (N >= 1, all finite).
        confidence: nominal coverage, e.g. 0.95 for the 2.5th..97.5th percentiles.
        n_boot: number of resamples.
        seed: seed of the resampling generator.
        statistic: a numpy reduction accepting ``axis=`` (``np.mean``, ``np.median``).
    Returns:
        The interval; ``(v, v)`` when there is a single value.
    """
    _check_bootstrap_args(confidence, n_boot)
    data = _finite_1d(values, "values")
    if data.size == 1:
        return ConfidenceInterval(low=float(data[0]), high=float(data[0]), confidence=confidence)
    index = np.random.default_rng(seed).integers(0, data.size, size=(n_boot, data.size))
    return _percentile_interval(np.asarray(statistic(data[index], axis=1)), confidence)


def _finite_1d(values: Sequence[float] | np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    data = (values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)).astype(float)
    data = data.reshape(-1)
    if data.size == 0:
        raise InputError(f"{name} is empty", [f"{name}: got 0 values"], hint="score at least one example first")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise InputError(
            f"{name} contains non-finite numbers",
            [f"{name}: {bad} of {data.size} values are NaN or infinite"],
            hint="drop or fix the examples whose metric failed before computing an interval",
        )
    return data


def target_ranks(queries: torch.Tensor, pool: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query's target in a candidate pool, by cosine similarity (ties rank it last).

    The retrieval protocol behind recall@k (paper section 4, Tables 1-2 style): query i scores every row of
    ``pool``; its rank is the number of pool rows scoring at least as high as ``pool[targets[i]]``, minus one
    (pessimistic ties, like :func:`true_pair_ranks`).

    Args:
        queries: (N, D) query embeddings.
        pool: (M, D) candidate embeddings.
        targets: (N,) integer indices into ``pool``.
    Returns:
        (N,) int64 ranks in [0, M).
    """
    problems = []
    if queries.ndim != 2 or pool.ndim != 2 or queries.shape[1] != pool.shape[1]:
        problems.append(f"queries {tuple(queries.shape)} and pool {tuple(pool.shape)} must be (N, D) and (M, D)")
    if targets.ndim != 1 or targets.shape[0] != queries.shape[0]:
        problems.append(f"targets must be (N,) = ({queries.shape[0]},), got {tuple(targets.shape)}")
    elif targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= pool.shape[0]):
        problems.append(
            f"targets must index the pool [0, {pool.shape[0]}), got {int(targets.min())}..{int(targets.max())}"
        )
    if problems:
        raise InputError("target_ranks got inconsistent inputs", problems, hint="targets[i] is pool row of query i")
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    p = torch.nn.functional.normalize(pool.float(), dim=-1)
    similarity = q @ p.T  # (N, M)
    target_score = similarity.gather(1, targets.long().unsqueeze(1))  # (N, 1)
    return (similarity >= target_score).sum(dim=1) - 1


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k from 0-based target ranks: the fraction of queries whose target ranks below ``k``."""
    if ranks.numel() == 0:
        raise InputError("recall_at_k got no ranks", ["ranks: 0 queries"], hint="rank at least one query")
    bad_ks = [k for k in ks if k < 1]
    if bad_ks:
        raise InputError("recall_at_k needs positive k", [f"ks: {bad_ks} are < 1"], hint="e.g. ks=(1, 5, 10)")
    return {int(k): float((ranks < k).float().mean()) for k in ks}


def recall_hits(ranks: Sequence[float] | np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """Per query, 1.0 when its target ranks below ``k`` (0-based ranks), else 0.0: recall@k is their mean.

    The per-example scores a bootstrap interval of recall@k resamples (:func:`bootstrap_ci`).
    """
    if k < 1:
        raise InputError("recall_hits needs a positive k", [f"k: {k} is < 1"], hint="e.g. k=1, 5 or 10")
    values = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks, dtype=float)
    return (values < k).astype(float)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, FID).

    Uses clean-fid's ``frechet_distance`` on the means and (unbiased) covariances, as ``fid_from_feats`` does
    (Parmar et al. 2022). Tiny negative values from the matrix square root's round-off are clipped to 0.

    Args:
        features_a: (N, D) features of one image set, N >= 2.
        features_b: (M, D) features of the other set, M >= 2.
    """
    problems = []
    for name, feats in (("features_a", features_a), ("features_b", features_b)):
        if feats.ndim != 2 or feats.shape[0] < 2:
            problems.append(f"{name}: needs an (N, D) matrix with N >= 2 rows, got shape {tuple(feats.shape)}")
        elif not np.isfinite(feats).all():
            problems.append(f"{name}: {int((~np.isfinite(feats)).sum())} values are NaN or infinite")
    if not problems and features_a.shape[1] != features_b.shape[1]:
        problems.append(f"feature widths differ: {features_a.shape[1]} vs {features_b.shape[1]}")
    if problems:
        raise InputError("cannot compute a Fréchet distance", problems, hint="FID needs two or more images per set")
    return _frechet(np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64))


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from cleanfid.fid import frechet_distance as clean_frechet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes sqrtm(disp=False), deprecated in SciPy
        value = clean_frechet(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))
    return max(float(value), 0.0)


def fid_bootstrap_ci(
    features_gen: np.ndarray,
    features_ref: np.ndarray,
    *,
    n_boot: int,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile-bootstrap interval of FID: both sets' rows are resampled with replacement, FID each time.

    Each resample costs one matrix square root of a (D, D) matrix (about a second on CPU for D = 2048), so
    ``n_boot`` has no default: pick it for the time you have (e.g. 100 for Inception features).
    """
    _check_bootstrap_args(confidence, n_boot)
    frechet_distance(features_gen, features_ref)  # validates both sets with a readable error
    rng = np.random.default_rng(seed)
    gen_index = rng.integers(0, features_gen.shape[0], size=(n_boot, features_gen.shape[0]))
    ref_index = rng.integers(0, features_ref.shape[0], size=(n_boot, features_ref.shape[0]))
    gen, ref = np.asarray(features_gen, dtype=np.float64), np.asarray(features_ref, dtype=np.float64)
    stats = np.array([_frechet(gen[g], ref[r]) for g, r in zip(gen_index, ref_index, strict=True)])
    return _percentile_interval(stats, confidence)


def paired_fid_bootstrap_ci(
    features_gen: Sequence[np.ndarray],
    features_ref: np.ndarray,
    *,
    n_boot: int,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile-bootstrap interval of the FID averaged over several generated sets of the same samples.

    Row ``i`` of ``features_ref`` and of every ``features_gen[s]`` (one set per SD seed) belong to sample ``i``, so
    each resample draws one index vector of samples and applies it to the reference and to every generated set
    (paired, unlike :func:`fid_bootstrap_ci`, whose two sets are unrelated); the statistic is the mean over the
    generated sets of their FID against the resampled reference. The ``(n_boot, N)`` index matrix comes from
    ``numpy.random.default_rng(seed)``. Each resample costs one matrix square root per generated set.
    """
    _check_bootstrap_args(confidence, n_boot)
    if not features_gen:
        raise InputError("paired FID bootstrap needs generated features", ["features_gen: no set given"])
    problems = [
        f"features_gen[{s}]: {g.shape[0]} rows, features_ref: {features_ref.shape[0]} (one row per sample in both)"
        for s, g in enumerate(features_gen)
        if g.shape[0] != features_ref.shape[0]
    ]
    if problems:
        raise InputError("paired FID bootstrap needs the same samples in every set", problems)
    for g in features_gen:
        frechet_distance(g, features_ref)  # validates every set with a readable error
    index = np.random.default_rng(seed).integers(0, features_ref.shape[0], size=(n_boot, features_ref.shape[0]))
    stats = np.array([np.mean([frechet_distance(g[i], features_ref[i]) for g in features_gen]) for i in index])
    return _percentile_interval(stats, confidence)
