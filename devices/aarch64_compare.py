"""Comparing two runs' answers for the aarch64 check: tolerances, pairing the daemon's face events frame by
frame and box by box, and the latency figures read from them. Pure functions of the events (no
emulator, no subprocess), imported by ``aarch64_check`` as a sibling module (it runs as a script).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_runtime.manifest import Manifest

FP32_TOL = 1e-4
INT8_STEPS = 2


def tolerance(manifest: Manifest, name: str) -> float:
    e = manifest.artifacts[name]
    if e.precision == "int8":
        scale = e.output.scale if e.output else None
        return INT8_STEPS * scale if scale else INT8_STEPS / 256.0
    return FP32_TOL


def read_events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _get(e: dict, *keys, default=None):
    for k in keys:
        if k in e:
            return e[k]
    return default


def face_events(events: list[dict]) -> dict[int, list[dict]]:
    """frame index -> the per-face events of that frame (new/update), sorted by box."""
    frames: dict[int, list[dict]] = {}
    for e in events:
        if _get(e, "type", "event", default="update") not in ("new", "update"):
            continue
        box = _get(e, "box", "bbox")
        if box is None:
            continue
        frames.setdefault(int(_get(e, "frame", "frame_index")), []).append(e)
    for v in frames.values():
        v.sort(key=lambda e: tuple(_get(e, "box", "bbox")))
    return frames


def top2_margin(p) -> float:
    """The gap between the two largest probabilities: a label flip within it is a near tie."""
    top = np.sort(np.asarray(p, float))[::-1]
    return float(top[0] - top[1])


def compare_events(x86: list[dict], arm: list[dict], tol: float, int8: bool = False) -> dict:
    fx, fa = face_events(x86), face_events(arm)
    common = sorted(set(fx) & set(fa))
    res = {"frames_x86": len(fx), "frames_aarch64": len(fa), "frames_compared": len(common),
           "faces_compared": 0, "boxes_equal": True, "labels_equal": True, "max_abs_diff_raw": 0.0,
           "max_abs_diff_smoothed": 0.0, "tolerance": tol, "mismatches": []}
    res["min_iou"] = 1.0
    res["faces_unmatched"] = 0
    for f in common:
        a, b = fx[f], fa[f]
        if not _boxes_close([_get(e, "box", "bbox") for e in a], [_get(e, "box", "bbox") for e in b]):
            res["boxes_equal"] = False
            if len(res["mismatches"]) < 5:
                res["mismatches"].append({"frame": f, "x86": [_get(e, "box", "bbox") for e in a],
                                          "aarch64": [_get(e, "box", "bbox") for e in b]})
        for ea in a:  # pair each x86 face with the aarch64 face it overlaps most
            ious = [_iou(ea["box"], eb["box"]) for eb in b]
            if not ious or max(ious) < 0.3:
                res["faces_unmatched"] += 1
                res["min_iou"] = 0.0
                continue
            eb = b[int(np.argmax(ious))]
            res["min_iou"] = min(res["min_iou"], max(ious))
            res["faces_compared"] += 1
            if not _boxes_close([ea.get("crop")], [eb.get("crop")]):
                res["boxes_equal"] = False
            if ea.get("label") != eb.get("label") or ea.get("raw_label") != eb.get("raw_label"):
                res["labels_equal"] = False
                res["labels_differing"] = res.get("labels_differing", 0) + 1
                if top2_margin(list(ea["raw"].values())) > 2 * tol or top2_margin(list(ea["probs"].values())) > 2 * tol:
                    res["label_flips_not_near_tie"] = res.get("label_flips_not_near_tie", 0) + 1
                if len(res["mismatches"]) < 10:
                    res["mismatches"].append({"frame": f, "box": ea.get("box"), "x86": ea.get("label"),
                                          "aarch64": eb.get("label")})
            for key, field in (("max_abs_diff_raw", ("raw", "probs_raw", "raw_probs")),
                               ("max_abs_diff_smoothed", ("probs", "smoothed", "probs_smoothed"))):
                pa, pb = _get(ea, *field), _get(eb, *field)
                if pa is None or pb is None:
                    continue
                if isinstance(pa, dict):
                    pa, pb = [pa[k] for k in sorted(pa)], [pb[k] for k in sorted(pa)]
                res[key] = max(res[key], float(np.max(np.abs(np.asarray(pa, float) - np.asarray(pb, float)))))
    res["frames_only_one_side"] = len(set(fx) ^ set(fa))
    # labels: equal, except a flip on a near tie (top-2 margin within 2 x tolerance) under int8
    res["ok"] = bool(common) and not res["frames_only_one_side"] and res["boxes_equal"] and \
        (res["labels_equal"] or (int8 and not res.get("label_flips_not_near_tie"))) and \
        res["max_abs_diff_raw"] <= tol and res["max_abs_diff_smoothed"] <= tol
    return res


def _boxes_close(a: list, b: list, px: int = 1) -> bool:
    """Same boxes within ``px`` per coordinate: YuNet's float convolutions sum in another order on
    Arm, which can move a rounded box edge by one pixel."""
    if len(a) != len(b):
        return False
    return all(x is not None and y is not None and np.abs(np.subtract(x, y)).max() <= px for x, y in zip(a, b))


def _iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0, min(ax2, bx2) - max(a[0], b[0])) * max(0, min(ay2, by2) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def latency_stats(events: list[dict], wall_s: float) -> dict:
    """Per-stage latency (ms) from the events, per-face classify time, and frames per second."""
    frames = face_events(events)
    detect, classify, per_face = [], [], []
    for evs in frames.values():
        lat = _get(evs[0], "latency_ms", "latency", default={}) or {}
        if "detect" in lat:
            detect.append(float(lat["detect"]))
        if "classify" in lat:
            classify.append(float(lat["classify"]))
            per_face.append(float(lat["classify"]) / len(evs))
    ts = sorted(float(_get(e, "ts", "timestamp", "time")) for evs in frames.values() for e in evs
                if _get(e, "ts", "timestamp", "time") is not None)
    n = len(frames)
    med = (lambda v: round(float(np.median(v)), 2) if v else None)
    return {"frames_with_faces": n, "detect_ms_median": med(detect), "classify_ms_median": med(classify),
            "classify_ms_per_face_median": med(per_face),
            "fps_steady": round((n - 1) / (ts[-1] - ts[0]), 2) if n > 1 and ts[-1] > ts[0] else None,
            "wall_s_incl_startup": round(wall_s, 1)}
