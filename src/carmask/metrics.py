"""Dice, as the Carvana competition scored it: per image, then averaged."""
from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks of the same shape; two empty masks score 1."""
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def mean_dice(pairs) -> float:
    """Mean of per-image dice over an iterable of (pred, truth) pairs."""
    scores = [dice(p, t) for p, t in pairs]
    return float(np.mean(scores)) if scores else float("nan")
