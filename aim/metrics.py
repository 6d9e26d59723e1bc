"""How far apart two models' test AUCs really are, and how well their probabilities are calibrated.

DeLong's covariance of AUCs scored on the same rows: two models scored on one test split make correlated errors,
so the standard error of their AUC difference is far smaller than either AUC's own; DeLong, DeLong and
Clarke-Pearson (1988) give it without resampling. This is the fast form of Sun and Xu (2014): midranks instead of
the m x n comparisons, O(k (m + n) log(m + n)) for k models.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata


def delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [k] of the rows of ``scores`` [k, N] against 0/1 ``labels`` [N], and their covariance [k, k]."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's covariance needs two rows of each class (got {m} positives, {n} negatives)")
    pos, neg = scores[:, labels], scores[:, ~labels]
    # Midranks (ties averaged) among the positives, among the negatives and among all rows.
    rank_pos, rank_neg = rankdata(pos, axis=1), rankdata(neg, axis=1)
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(1) / m - (m + 1) / 2) / n
    # Structural components: for each positive, the share of negatives it outranks; for each negative, the share
    # of positives that outrank it (a tie counts a half in both).
    v_pos = (rank_all[:, :m] - rank_pos) / n
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, cov


def auc_difference(aucs: np.ndarray, cov: np.ndarray, i: int, j: int) -> dict[str, float]:
    """AUC i minus AUC j, its standard error and the two-sided p-value of "no difference" (normal approximation)."""
    difference = float(aucs[i] - aucs[j])
    se = math.sqrt(max(float(cov[i, i] + cov[j, j] - 2 * cov[i, j]), 0.0))
    p = 2 * float(norm.sf(abs(difference) / se)) if se > 0 else (1.0 if difference == 0 else 0.0)
    return {"difference": difference, "se": se, "p_value": p}


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """How far predicted click rates are from observed ones; AUC cannot tell, and a bid is price x pCTR.

    * ``predicted_over_observed``: mean predicted CTR over the observed click rate (1 is calibrated on the whole;
      ads teams call it PCOC); None where no row is a click;
    * ``calibration_error``: the expected calibration error (ECE) over ``bins`` equal-count bins of the predictions
      (sorted, so every bin holds about N / bins rows; equal-width bins would leave most empty at CTR-like rates):
      the rows-weighted mean of |mean prediction - click rate| per bin;
    * ``bins``: each bin's mean prediction, click rate and row count (the reliability curve).
    """
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if labels.shape != probs.shape or not len(labels):
        raise ValueError(f"calibration needs as many predictions as labels, at least one (got {probs.shape} and "
                         f"{labels.shape})")
    order = np.argsort(probs, kind="stable")
    chunks = [c for c in np.array_split(order, min(bins, len(order))) if len(c)]
    predicted = np.array([probs[c].mean() for c in chunks])
    observed = np.array([labels[c].mean() for c in chunks])
    counts = np.array([len(c) for c in chunks])
    rate = labels.mean()
    return {"predicted_over_observed": float(probs.mean() / rate) if rate > 0 else None,  # no clicks: undefined
            "calibration_error": float((counts * np.abs(predicted - observed)).sum() / counts.sum()),
            "bins": {"predicted": predicted.tolist(), "observed": observed.tolist(), "rows": counts.tolist()}}


__all__ = ["auc_difference", "calibration", "delong"]
