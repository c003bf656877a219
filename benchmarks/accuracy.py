"""Accuracy of one predictor on a labelled split: top-1, macro-F1, predictions for agreement."""
from __future__ import annotations

import numpy as np

from edge_runtime.backends import SCORING_BATCH
from edge_runtime.labels import LABELS


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the seven classes (numpy only: the device-side extra has no scikit-learn)."""
    f1s = []
    for k in range(len(LABELS)):
        tp = np.sum((y_pred == k) & (y_true == k))
        fp = np.sum((y_pred == k) & (y_true != k))
        fn = np.sum((y_pred != k) & (y_true == k))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def evaluate(predict, x: np.ndarray, y: np.ndarray, batch: int = SCORING_BATCH) -> dict:
    preds = np.concatenate([predict(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return {"accuracy": float(np.mean(preds == y)), "macro_f1": macro_f1(y, preds), "n": int(len(y)),
            "predictions": preds.astype(int).tolist()}
