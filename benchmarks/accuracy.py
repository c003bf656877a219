"""Accuracy of one predictor on a labelled split: top-1, macro-F1, predictions for agreement."""
from __future__ import annotations

import numpy as np

from edge_runtime.backends import SCORING_BATCH
from export.gate import macro_f1  # one definition, so export and benchmark figures agree


def evaluate(predict, x: np.ndarray, y: np.ndarray, batch: int = SCORING_BATCH) -> dict:
    preds = np.concatenate([predict(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return {"accuracy": float(np.mean(preds == y)), "macro_f1": macro_f1(y, preds), "n": int(len(y)),
            "predictions": preds.astype(int).tolist()}
