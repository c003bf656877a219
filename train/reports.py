"""Run-folder reports: EDA plots, learning curves, confusion matrix, per-class error, saliency.

Matplotlib with the Agg backend; every figure is written atomically as PNG.
"""
from __future__ import annotations

import io
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import classification_report, confusion_matrix  # noqa: E402

from edge_runtime.labels import LABELS  # noqa: E402
from edge_runtime.manifest import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402


def save_fig(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def class_distribution(counts: dict[str, dict[str, int]], path) -> None:
    """Grouped bars: images per class for each split (the thesis's EDA figure)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    n = len(counts)
    xs = np.arange(len(LABELS))
    for i, (split, c) in enumerate(counts.items()):
        vals = [c[lab] for lab in LABELS]
        bars = ax.bar(xs + (i - (n - 1) / 2) * 0.8 / n, vals, 0.8 / n, label=f"{split} ({sum(vals):,})")
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(xs, LABELS)
    ax.set_ylabel("images")
    ax.set_title("Class distribution per split")
    ax.legend()
    save_fig(fig, path)


def sample_grid(images: np.ndarray, labels: np.ndarray, path, per_class: int = 6, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(LABELS), per_class, figsize=(per_class * 1.1, len(LABELS) * 1.15))
    for k, lab in enumerate(LABELS):
        idx = np.flatnonzero(labels == k)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for j in range(per_class):
            ax = axes[k, j]
            ax.axis("off")
            if j < len(pick):
                ax.imshow(images[pick[j]], cmap="gray", vmin=0, vmax=255)
        axes[k, 0].set_title(lab, fontsize=8, loc="left")
    fig.suptitle("Training samples per class")
    save_fig(fig, path)


def learning_curves(history: dict[str, list[float]], path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ep = np.arange(1, len(history.get("loss", [])) + 1)
    for key, ax in (("accuracy", a1), ("loss", a2)):
        if key in history:
            ax.plot(ep, history[key], label="train")
        if f"val_{key}" in history:
            ax.plot(ep, history[f"val_{key}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    save_fig(fig, path)


def confusion_heatmap(y_true, y_pred, path, title: str = "Confusion matrix (row-normalised)") -> np.ndarray:
    cm = confusion_matrix(y_true, y_pred, labels=range(len(LABELS)))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_fig(fig, path)
    return cm


def per_class_error(cm: np.ndarray, path) -> None:
    err = 1 - np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(LABELS, err, color="tab:red")
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction incorrect")
    ax.set_title("Per-class fraction incorrect (test)")
    save_fig(fig, path)




def write_classification_report(y_true, y_pred, out_dir) -> dict:
    kw = dict(labels=list(range(len(LABELS))), target_names=list(LABELS), zero_division=0, digits=4)
    atomic_write_text(out_dir / "classification_report.txt", classification_report(y_true, y_pred, **kw))
    rep = classification_report(y_true, y_pred, output_dict=True, **kw)
    atomic_write_json(out_dir / "classification_report.json", rep)
    return rep


def saliency_grid(images_u8, saliency, y_true, y_pred, path, title: str) -> None:
    """Rows = classes; each cell a face with its |d score / d pixel| map overlaid."""
    rows = sorted(set(int(y) for y in y_true))
    per_row = max(sum(1 for y in y_true if y == r) for r in rows)
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 1.3, len(rows) * 1.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, k in enumerate(rows):
        idx = [i for i, y in enumerate(y_true) if y == k]
        for j, i in enumerate(idx):
            ax = axes[r, j]
            ax.imshow(images_u8[i], cmap="gray", vmin=0, vmax=255)
            ax.imshow(saliency[i], cmap="jet", alpha=0.45)
            ok = y_pred[i] == k
            ax.set_title(f"{LABELS[k][:4]}→{LABELS[y_pred[i]][:4]}", fontsize=6, color="green" if ok else "red")
    fig.suptitle(title, fontsize=9)
    save_fig(fig, path)


def write_json(path, obj) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=float)))
