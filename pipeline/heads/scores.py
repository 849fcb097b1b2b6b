"""Scores of class probabilities that the softmax heads' training computes every epoch, for every head.

`log_loss` is scikit-learn's `log_loss(y, proba, labels=range(C))` to the bit, without its checks of the
inputs: on 5,000 x 10 probabilities 3 ms a call there, and a 24-head sweep of 20 epochs calls it 480 times.
The heads' inputs are checked once, at their boundary (validation.py), and their probabilities are softmax rows.
"""
from __future__ import annotations

import numpy as np


def log_loss(y, proba) -> float:
    """Mean cross-entropy of N x C probabilities `proba` (rows of a softmax) for labels `y` in 0..C-1: each row's
    -log of its true class's probability, clipped to [eps, 1 - eps] of proba's dtype, as scikit-learn clips it."""
    proba = np.asarray(proba)
    eps = np.finfo(proba.dtype).eps
    return float(np.mean(-np.log(np.clip(proba[np.arange(len(proba)), np.asarray(y)], eps, 1 - eps))))
