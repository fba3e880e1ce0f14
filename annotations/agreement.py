"""Inter-annotator agreement over an (items x raters) table with missing values: Fleiss' kappa, Krippendorff's alpha.

A *ratings table* is a sequence of items, each a sequence of the labels its raters gave; a missing rating is
``None`` (or the row is simply shorter, as for the two released PartiPrompts prompts with four votes). Both
statistics depend only on how many times each category was given to each item, so both are computed from the
(items x categories) count matrix that :func:`category_counts` builds.

Fleiss' kappa (Fleiss 1971) assumes every item has the same number of ratings ``n``. ``fleiss_kappa`` therefore
has two modes:

- ``"complete"`` (default): only items with the full number of ratings (the largest count in the table) are used;
  the others are dropped and counted in the result. This is Fleiss' statistic exactly.
- ``"generalised"``: every item with at least two ratings is used; item ``i``'s agreement is
  ``sum_j n_ij (n_ij - 1) / (n_i (n_i - 1))`` over its own ``n_i`` ratings, the expected agreement comes from the
  category shares pooled over all ratings. It equals ``"complete"`` when all items have the same count.

Krippendorff's alpha (nominal metric) handles missing ratings natively: only items with at least two ratings
("pairable values") contribute, via the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's
alpha-reliability").

Degenerate tables (every rating in one category, so chance agreement is already perfect) give ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Ratings = Sequence[Sequence[Hashable | None]]


def category_counts(ratings: Ratings, categories: Sequence[Hashable] | None = None) -> tuple[np.ndarray, list]:
    """``(counts, categories)``: ``counts[i, j]`` = how many raters put item ``i`` in ``categories[j]``.

    ``None`` ratings are missing and not counted. Without ``categories`` they are the distinct labels in order of
    first appearance; with them, a label outside the list raises ``ValueError``.
    """
    if categories is None:
        seen: dict[Hashable, None] = {}
        for row in ratings:
            for value in row:
                if value is not None:
                    seen.setdefault(value, None)
        categories = list(seen)
    index = {c: j for j, c in enumerate(categories)}
    counts = np.zeros((len(ratings), len(categories)), dtype=np.int64)
    for i, row in enumerate(ratings):
        for value in row:
            if value is None:
                continue
            if value not in index:
                raise ValueError(f"item {i}: rating {value!r} is not one of the categories {list(categories)}")
            counts[i, index[value]] += 1
    return counts, list(categories)


@dataclass(frozen=True)
class FleissResult:
    """Fleiss' kappa with what went into it."""

    kappa: float
    observed: float  # mean per-item agreement P-bar
    expected: float  # chance agreement P-bar_e
    n_items: int  # items used
    n_dropped: int  # items left out (fewer ratings than the full count in "complete" mode, or < 2 ratings)
    raters: int  # ratings per item in "complete" mode; the largest count in "generalised" mode


def fleiss_kappa_from_counts(
    counts: np.ndarray | Sequence[Sequence[int]], mode: Literal["complete", "generalised"] = "complete"
) -> FleissResult:
    """Fleiss' kappa of an (items x categories) count matrix; see the module docstring for ``mode``."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be 2-D (items x categories), got shape {counts.shape}")
    if mode not in ("complete", "generalised"):
        raise ValueError(f"mode must be 'complete' or 'generalised', got {mode!r}")
    per_item = counts.sum(axis=1)
    full = int(per_item.max()) if len(per_item) else 0
    keep = per_item == full if mode == "complete" else per_item >= 2
    keep &= per_item >= 2
    used, n_i = counts[keep], per_item[keep]
    n_dropped = int(len(counts) - keep.sum())
    if len(used) == 0:
        return FleissResult(math.nan, math.nan, math.nan, 0, n_dropped, full)
    p_item = (used * (used - 1)).sum(axis=1) / (n_i * (n_i - 1))
    observed = float(p_item.mean())
    shares = used.sum(axis=0) / used.sum()
    expected = float((shares**2).sum())
    kappa = math.nan if math.isclose(expected, 1.0) else (observed - expected) / (1.0 - expected)
    return FleissResult(float(kappa), observed, expected, int(len(used)), n_dropped, full)


def fleiss_kappa(
    ratings: Ratings,
    categories: Sequence[Hashable] | None = None,
    mode: Literal["complete", "generalised"] = "complete",
) -> FleissResult:
    """Fleiss' kappa of a ratings table (items x raters, ``None`` = missing)."""
    return fleiss_kappa_from_counts(category_counts(ratings, categories)[0], mode=mode)


@dataclass(frozen=True)
class AlphaResult:
    """Krippendorff's alpha (nominal) with what went into it."""

    alpha: float
    observed_disagreement: float  # D_o
    expected_disagreement: float  # D_e
    n_pairable: int  # pairable values n (ratings in items with >= 2 ratings)
    n_items: int  # items with >= 2 ratings


def krippendorff_alpha_nominal_from_counts(counts: np.ndarray | Sequence[Sequence[int]]) -> AlphaResult:
    """Krippendorff's alpha, nominal metric, of an (items x categories) count matrix."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be 2-D (items x categories), got shape {counts.shape}")
    m_u = counts.sum(axis=1)
    pairable = counts[m_u >= 2]
    m_u = m_u[m_u >= 2]
    if len(pairable) == 0:
        return AlphaResult(math.nan, math.nan, math.nan, 0, 0)
    # Coincidence matrix o_ck = sum_u (n_uc n_uk - [c == k] n_uc) / (m_u - 1).
    outer = np.einsum("uc,uk->uck", pairable, pairable)
    outer -= np.einsum("uc,ck->uck", pairable, np.eye(pairable.shape[1]))
    coincidence = (outer / (m_u - 1)[:, None, None]).sum(axis=0)
    n_c = coincidence.sum(axis=1)
    n = float(n_c.sum())
    off = ~np.eye(len(n_c), dtype=bool)
    observed = float(coincidence[off].sum() / n)
    expected = float(np.outer(n_c, n_c)[off].sum() / (n * (n - 1)))
    alpha = math.nan if expected == 0 else 1.0 - observed / expected
    return AlphaResult(float(alpha), observed, expected, int(round(n)), int(len(pairable)))


def krippendorff_alpha_nominal(ratings: Ratings, categories: Sequence[Hashable] | None = None) -> AlphaResult:
    """Krippendorff's alpha (nominal) of a ratings table (items x raters, ``None`` = missing)."""
    return krippendorff_alpha_nominal_from_counts(category_counts(ratings, categories)[0])
