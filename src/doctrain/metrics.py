"""The reference recipe's verification metric: score every pair by (cos + 1) / 2, label it
same-class or not, and report AUROC and the true-positive rate at fixed false-positive rates."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

FPR_TARGETS = (1e-4, 1e-3, 1e-2, 1e-1)


def pair_scores(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs of one batch: embeddings [N, D] (unit rows), labels [N] ->
    scores [N(N-1)/2] in [0, 1] and same-class flags [N(N-1)/2]."""
    upper = np.triu_indices(len(labels), k=1)
    cosine = embeddings @ embeddings.T
    return (cosine[upper] + 1) / 2, labels[upper[0]] == labels[upper[1]]


def verification_metrics(scores: np.ndarray, same: np.ndarray) -> dict:
    """AUROC and, per FPR target, the best TPR reached at or below it and its score threshold.
    A target below 1 / (number of negative pairs) cannot be resolved: `resolvable` says so."""
    if same.all() or not same.any():
        raise ValueError("the validation pairs need both same-class and different-class pairs")
    fpr, tpr, thresholds = roc_curve(same, scores)
    negatives = int((~same).sum())
    out = {
        "auroc": float(roc_auc_score(same, scores)),
        "positive_pairs": int(same.sum()),
        "negative_pairs": negatives,
        "at_fpr": {},
    }
    for target in FPR_TARGETS:
        ok = np.flatnonzero(fpr <= target)
        best = ok[np.argmax(tpr[ok])]
        out["at_fpr"][f"{target:g}"] = {
            "tpr": float(tpr[best]),
            "threshold": float(min(thresholds[best], 1.0)),
            "resolvable": bool(target * negatives >= 1),
        }
    return out


def roc_points(scores: np.ndarray, same: np.ndarray, max_points: int = 400) -> dict:
    fpr, tpr, _ = roc_curve(same, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}
