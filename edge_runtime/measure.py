"""Detector comparison on generated videos: recall and ms/frame (how the default was chosen).

    python -m edge_runtime.measure --data ../shared/data/fer2013 [--blazeface face_detection_short_range.tflite]

A face counts as found when a detected box has IoU >= 0.3 with its ground-truth box.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from .detectors import make_detector
from .preprocess import to_gray
from .synthetic import iou, make_video

# (faces per frame, face size in px) on 640x480 — one close face to a small crowd
SCENES = ((1, 120), (4, 120), (6, 96))


def scenes(data_root, seeds: int, folder: Path) -> list[tuple[np.ndarray, dict]]:
    out = []
    for seed in range(seeds):
        for n, face in SCENES:
            path = folder / f"s{seed}_{n}.avi"
            truth = make_video(path, data_root, n_faces=n, frames=1, face=face, seed=seed * 10 + n, truth_json=False)
            cap = cv2.VideoCapture(str(path))
            ok, frame = cap.read()
            cap.release()
            out.append((to_gray(frame), truth))
    return out


def evaluate(detector, cases, repeats: int = 3) -> dict:
    found = total = false_pos = 0
    times = []
    for gray, truth in cases:
        for _ in range(repeats):
            t0 = time.perf_counter()
            boxes = detector.detect(gray)
            times.append((time.perf_counter() - t0) * 1000)
        faces = [f["box"] for f in truth["faces"]]
        found += sum(any(iou(f, b) >= 0.3 for b in boxes) for f in faces)
        false_pos += sum(not any(iou(f, b) >= 0.3 for f in faces) for b in boxes)
        total += len(faces)
    return {"recall": found / total, "found": found, "faces": total, "false_pos": false_pos,
            "ms_median": float(np.median(times))}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m edge_runtime.measure", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data/fer2013", help="FER2013 root with test/<label>/*.jpg")
    p.add_argument("--seeds", type=int, default=6, help="scenes per layout")
    p.add_argument("--blazeface", default="", help="BlazeFace short-range .tflite to include")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    cv2.setNumThreads(a.threads)
    candidates = [("haar scale=1.0", dict(kind="haar", scale=1.0)),
                  ("haar scale=0.5 (default)", dict(kind="haar", scale=0.5))]
    if a.blazeface:
        candidates += [(f"blazeface score={s}", dict(kind="blazeface", model=a.blazeface, score=s, threads=a.threads))
                       for s in (0.5, 0.3)]
    with tempfile.TemporaryDirectory() as tmp:
        cases = scenes(a.data, a.seeds, Path(tmp))
        print(f"{len(cases)} frames 640x480, {sum(len(t['faces']) for _, t in cases)} faces, {a.threads} thread(s)")
        for name, kw in candidates:
            r = evaluate(make_detector(**kw), cases)
            print(f"{name:26s} recall {r['found']:3d}/{r['faces']} = {r['recall']:5.1%}  false+ {r['false_pos']:3d}  "
                  f"{r['ms_median']:6.1f} ms/frame (median)")


if __name__ == "__main__":
    main()
