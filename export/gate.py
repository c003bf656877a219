"""Scoring and the accuracy-drop gate, and the export report (JSON + Markdown table).

Every artifact is scored on the test split (top-1 accuracy, macro-F1) and on its agreement with
the Keras reference (share of identical top-1 predictions). drop = reference accuracy - artifact
accuracy, in percentage points. The gate is two-sided: a converted model that *gains* accuracy
has changed as much as one that loses it, so |drop| must be <= the limit.
"""
from __future__ import annotations

import numpy as np

from edge_runtime.manifest import Manifest, Status
from train.scores import macro_f1

USABLE, REJECTED, FAILED = Status.USABLE, Status.REJECTED, Status.FAILED


def score(probs: np.ndarray, y_true: np.ndarray, ref_probs: np.ndarray | None = None,
          ref_accuracy: float | None = None) -> dict:
    pred = probs.argmax(1)
    out = {"accuracy": float(np.mean(pred == y_true)), "macro_f1": macro_f1(y_true, pred)}
    if ref_probs is not None:
        out["agreement"] = float(np.mean(pred == ref_probs.argmax(1)))
        out["max_abs_prob_diff"] = float(np.abs(probs - ref_probs).max()) if len(probs) else 0.0
    if ref_accuracy is not None:
        out["drop_pp"] = round(100.0 * (ref_accuracy - out["accuracy"]), 4)
    return out


MAX_DROP_PP = 1.0  # the default gate: an artifact whose accuracy moves by more than this (either way) is rejected


def gate(drop_pp: float, max_drop: float) -> tuple[str, str]:
    """-> (status, reason). Two-sided: |drop| <= max_drop."""
    if abs(drop_pp) <= max_drop:
        return USABLE, ""
    direction = "drops" if drop_pp > 0 else "gains"
    return REJECTED, f"accuracy {direction} {abs(drop_pp):.2f} pp, over the {max_drop:g} pp limit"


def _fmt_size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def table_rows(manifest: Manifest) -> list[list[str]]:
    rows = []
    for name, a in manifest.artifacts.items():
        drop = a.drop_pp
        rows.append([
            name, a.precision, _fmt_size(a.size),
            "-" if a.convert_seconds is None else f"{a.convert_seconds:.1f} s",
            _pct(a.accuracy), "-" if a.macro_f1 is None else f"{a.macro_f1:.3f}",
            _pct(a.agreement), "ref" if name == "keras" else ("-" if drop is None else f"{drop:+.2f}"),
            "-" if a.ms_per_face is None else f"{a.ms_per_face:.2f}",
            a.status + (f" ({a.reason})" if a.reason else ""),
        ])
    return rows


HEADER = ["artifact", "precision", "size", "convert", "accuracy", "macro-F1", "agreement", "drop pp",
          "ms/face", "status"]


def text_table(manifest: Manifest) -> str:
    rows = [HEADER] + table_rows(manifest)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(lines)


def markdown_report(manifest: Manifest) -> str:
    d, gate = manifest.data, manifest.gate
    lines = [
        f"# Export report: {manifest.model}",
        "",
        f"Source `{manifest.source['run_dir']}` (sha256 `{manifest.source['sha256'][:12]}`), "
        f"test split `{d['test_split']}` of `{d['root']}`: {d['test_size']:,} images"
        + (f" (fraction {d['fraction']})" if d.get("fraction", 1.0) < 1.0 else "")
        + f", file-list hash `{d['test_files_hash'][:12]}`. int8 calibration: "
        f"{d['calibration']['size']} train images, stratified.",
        "",
        f"Gate: |drop| <= {gate['max_drop_pp']:g} pp against the Keras reference "
        f"(drop = Keras accuracy - artifact accuracy). Agreement = share of identical top-1 "
        f"predictions with Keras. ms/face: batch 1, 1 thread, on the export machine "
        f"({gate.get('timing_note', '')}).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(manifest)]
    versions = ", ".join(f"{k} {v}" for k, v in manifest.versions.items() if k != "platform")
    lines += ["", f"Created {manifest.created} with {versions}.", ""]
    return "\n".join(lines)
