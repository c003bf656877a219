"""Accuracy and macro-F1 in numpy: one definition for training reports, the export gate and benchmarks."""
from __future__ import annotations

import numpy as np

from edge_runtime.labels import NUM_CLASSES


def macro_f1(y_true, y_pred, n: int = NUM_CLASSES) -> float:
    """Unweighted mean of the per-class F1 over all n classes; a class never predicted nor present scores 0
    (scikit-learn's f1_score(average="macro", labels=range(n), zero_division=0))."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    f1 = []
    for k in range(n):
        tp = np.sum((y_pred == k) & (y_true == k))
        fp = np.sum((y_pred == k) & (y_true != k))
        fn = np.sum((y_pred != k) & (y_true == k))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def metrics(y_true, y_pred) -> dict:
    return {"accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))), "macro_f1": macro_f1(y_true, y_pred)}
