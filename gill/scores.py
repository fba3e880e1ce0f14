"""Scores of a classifier's labels without torch: the macro-F1 and confusion matrix of the retrieve-vs-generate
decision (paper section 3.3, scored as torchmetrics scores it).

numpy only, so that the judging commands (``gill annotate aggregate``, ``human-baseline``), which score people's
votes with the same macro-F1 as the classifier, start without the model stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _labels(values: Any) -> np.ndarray:
    """Integer labels as a flat int64 array (a torch tensor on any device, an array or a sequence)."""
    if hasattr(values, "detach"):  # a torch tensor: read it without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred {p.size}")
    return t, p


def macro_f1(y_true: Sequence[int] | Any, y_pred: Sequence[int] | Any, num_classes: int = 2) -> float:
    """Macro-F1 as torchmetrics' ``multiclass_f1_score(average="macro")``: per class ``2TP / (2TP + FP + FN)``,
    averaged over the classes that occur in the targets or the predictions (0.0 when there are none).

    The project's one macro-F1: :func:`gill.decision.macro_f1` is this function, and
    :func:`annotations.aggregate.macro_f1` maps string labels to class indices and calls it. A label outside
    ``range(num_classes)`` belongs to no class."""
    t, p = _pair(y_true, y_pred)
    classes = np.arange(num_classes)[:, None]  # (C, 1)
    is_t, is_p = t[None, :] == classes, p[None, :] == classes  # (C, N)
    tp = (is_t & is_p).sum(1).astype(np.float64)
    fp = (~is_t & is_p).sum(1).astype(np.float64)
    fn = (is_t & ~is_p).sum(1).astype(np.float64)
    denom = 2 * tp + fp + fn
    present = denom > 0
    if not present.any():
        return 0.0
    return float((2 * tp[present] / denom[present]).mean())


def confusion_matrix(
    y_true: Sequence[int] | Any, y_pred: Sequence[int] | Any, num_classes: int = 2
) -> tuple[tuple[int, ...], ...]:
    """``counts[true][predicted]``: how many examples of each true class got each predicted class (labels outside
    ``range(num_classes)`` are not counted)."""
    t, p = _pair(y_true, y_pred)
    inside = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    counts = np.bincount(t[inside] * num_classes + p[inside], minlength=num_classes * num_classes)
    return tuple(tuple(int(c) for c in row) for row in counts.reshape(num_classes, num_classes).tolist())
