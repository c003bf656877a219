"""What a grid search writes and reads back in its --out folder: cv_results.csv (ranked), results.txt
(the thesis's format), best_params.json and heatmap.png. ``--resume`` reads the rows it wrote."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from edge_runtime.manifest import atomic_write_json, atomic_write_text


def read_results(out: Path) -> list[dict]:
    path = out / "cv_results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_outputs(out: Path, rows: list[dict], model: str, axes: tuple[str, str] | None) -> dict | None:
    """cv_results.csv (ranked), results.txt (thesis style), heatmap.png, best_params.json."""
    if not rows:
        return None
    scores = np.array([float(r["mean_test_score"]) for r in rows])
    losses = np.array([float(r.get("mean_test_log_loss") or "nan") for r in rows])
    # rank by accuracy (the thesis's score); equal accuracies (e.g. every cell predicting the
    # majority class) are told apart by the lower held-out log loss, then by grid order
    order = np.lexsort((np.arange(len(rows)), np.nan_to_num(losses, nan=np.inf), -scores))
    ranks = np.empty(len(rows), int)
    ranks[order] = np.arange(1, len(rows) + 1)
    fields = list(dict.fromkeys(k for r in rows for k in r if k != "rank_test_score")) + ["rank_test_score"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    for r, rank in zip(rows, ranks):
        w.writerow({**r, "rank_test_score": int(rank)})
    atomic_write_text(out / "cv_results.csv", buf.getvalue())

    best = rows[int(order[0])]
    best_cell = json.loads(best["params"])
    lines = [f"Best: {float(best['mean_test_score']):f} using {best_cell}"]
    lines += [f"{float(r['mean_test_score']):f} ({float(r['std_test_score']):f}) with: {json.loads(r['params'])}"
              for r in rows]
    atomic_write_text(out / "results.txt", "\n".join(lines) + "\n")
    atomic_write_json(out / "best_params.json", {"model": model, **best_cell})
    if axes:
        heatmap(rows, axes, out / "heatmap.png")
    return {"cell": best_cell, "mean": float(best["mean_test_score"]), "std": float(best["std_test_score"])}


def heatmap(rows: list[dict], axes: tuple[str, str], path: Path) -> None:
    """Mean CV accuracy over two grid keys (best over any other searched keys)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ky, kx = axes
    cells = [(json.loads(r["params"]), float(r["mean_test_score"])) for r in rows]
    ys = sorted({c.get(ky) for c, _ in cells}, key=str) if ky else [None]
    xs = sorted({c.get(kx) for c, _ in cells}, key=str) if kx else [None]
    ys, xs = sorted(ys, key=_num), sorted(xs, key=_num)
    m = np.full((len(ys), len(xs)), np.nan)
    for c, s in cells:
        i, j = ys.index(c.get(ky)), xs.index(c.get(kx))
        m[i, j] = s if np.isnan(m[i, j]) else max(m[i, j], s)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(xs), 1.4 + 1.0 * len(ys)))
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center",
                        color="white" if m[i, j] < np.nanmean(m) else "black")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(kx or "")
    ax.set_ylabel(ky or "")
    ax.set_title("mean CV accuracy")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _num(v):
    return (0, v) if isinstance(v, (int, float)) else (1, str(v))
