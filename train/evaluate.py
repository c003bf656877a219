"""After the fit: BatchNorm re-estimation, the one scoring on the test split, the reports and the
run manifest."""
from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.labels import LABELS, NUM_CLASSES
from edge_runtime.manifest import Manifest, sha256_file, write_manifest
from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from edge_runtime.versions import package_versions

from . import reports
from .data import Dataset
from .scores import metrics


def saliency(model, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """|d p(class) / d pixel| per image, normalised to [0, 1]."""
    import tensorflow as tf
    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        probs = model(xt, training=False)
        score = tf.reduce_sum(probs * tf.one_hot(classes, NUM_CLASSES), axis=1)
    g = np.abs(tape.gradient(score, xt).numpy())[..., 0]
    g /= np.maximum(g.reshape(len(g), -1).max(axis=1), 1e-12)[:, None, None]
    return g


def _pick_saliency(y_true, y_pred, per_class: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    picks = []
    for k in range(NUM_CLASSES):
        for ok in (True, False):
            idx = np.flatnonzero((y_true == k) & ((y_pred == k) == ok))
            picks += rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist()
    return picks


def recalibrate(model, data: Dataset, spec: PreprocessSpec, progress: bool = False) -> dict | None:
    """Re-estimate the BatchNorm statistics on the clean training faces (train/batchnorm.py);
    -> what was done, with validation accuracy before and after when there is a validation split."""
    from .batchnorm import batchnorm_layers, recalibrate_batchnorm
    if not batchnorm_layers(model):
        return None
    x_val = scale_pixels(data.val.images, spec) if len(data.val) else None

    def val_accuracy():
        if x_val is None:
            return None
        return float(np.mean(model.predict(x_val, batch_size=256, verbose=0).argmax(1) == data.val.labels))

    before = val_accuracy()
    t0 = time.perf_counter()
    layers = recalibrate_batchnorm(model, scale_pixels(data.train.images, spec), progress=progress)
    seconds = time.perf_counter() - t0
    after = val_accuracy()
    moved = f": validation accuracy {before:.2%} -> {after:.2%}" if before is not None else ""
    print(f"re-estimated {layers} BatchNorm layers on {len(data.train):,} clean training faces in {seconds:.0f} s{moved}")
    return {"layers": layers, "faces": len(data.train), "seconds": round(seconds, 1),
            "val_accuracy_before": before, "val_accuracy_after": after}


def finish_run(model, run: dict, data: Dataset, spec: PreprocessSpec, summary: dict, history: dict,
               train_seconds: float, bn: dict | None, out_dir: Path, extra: dict | None = None) -> Manifest:
    """Save ``model`` (float32), score it once on the test split, write the reports and the manifest."""
    import keras
    out_dir = Path(out_dir)
    tmp = out_dir / ".model.tmp.keras"
    model.save(tmp)
    tmp.replace(out_dir / "model.keras")
    model = keras.models.load_model(out_dir / "model.keras")  # evaluate exactly what was saved

    x_test = scale_pixels(data.test.images, spec)
    probs = model.predict(x_test, batch_size=256, verbose=0)
    y_pred = probs.argmax(1)
    y_true = data.test.labels
    test_metrics = metrics(y_true, y_pred)
    report = reports.write_classification_report(y_true, y_pred, out_dir)
    reports.learning_curves(history, out_dir / "curves.png")
    cm = reports.confusion_heatmap(y_true, y_pred, out_dir / "confusion_matrix.png",
                                   f"{run['model']}: test accuracy {test_metrics['accuracy']:.1%} (row-normalised)")
    reports.per_class_error(cm, out_dir / "per_class_error.png")
    picks = _pick_saliency(y_true, y_pred, run["saliency_per_class"], run["seed"])
    if picks:
        sal = saliency(model, x_test[picks], y_pred[picks])
        reports.saliency_grid(data.test.images[picks], sal, y_true[picks], y_pred[picks],
                              out_dir / "saliency.png", "Saliency |d p(predicted) / d pixel|, green = correct")

    val_acc = history.get("val_accuracy")  # None in a refit
    epochs_run = len(history["loss"])
    best_epoch = int(np.argmax(val_acc)) + 1 if val_acc else epochs_run
    manifest = Manifest(
        kind="run", model=run["model"], params=run["params"], recipe=run["recipe"],
        precision=run["precision"],  # what recipe.precision resolved to on the training machine
        seed=run["seed"], init_seed=run["init_seed"], labels=tuple(LABELS), preprocessing=spec,
        model_file="model.keras", model_sha256=sha256_file(out_dir / "model.keras"),
        parameters=int(model.count_params()),
        data={k: summary[k] for k in ("root", "layout", "test_split", "val_fraction", "sizes", "files_hash")}
        | {"fraction": run["fraction"], "skipped": sum(len(v) for v in summary["skipped"].values())},
        # val_accuracy: the best epoch's, which chose the checkpoint (before BatchNorm re-estimation)
        metrics={"val_accuracy": float(max(val_acc)) if val_acc else None, "best_epoch": best_epoch,
                 "epochs_run": epochs_run, "test": test_metrics,
                 "test_weighted_f1": float(report["weighted avg"]["f1-score"])},
        bn_recalibration=bn,  # None when off or the model has no BatchNorm
        teacher=run["teacher"],  # None unless distilled: the soft-label file and the runs it came from
        init=run.get("init"),  # None unless fine-tuned: the run whose weights training started from
        reframe=run.get("reframe"),  # None unless trained on faces in the device's framing
        holdout=run.get("holdout"),  # None unless an out-of-fold teacher: the fold it never saw
        train_seconds=round(train_seconds, 1),  # fit + BatchNorm re-estimation
        versions=package_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=" ".join(sys.argv),
        **(extra or {}))
    return write_manifest(out_dir, manifest)
