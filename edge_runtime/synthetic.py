"""Synthetic test videos: FER test faces composited onto larger frames at known places.

Used by the tests and by ``benchmarks`` (detector recall, end-to-end pipeline), so the ground
truth format is part of the API: ``{"frames": N, "size": [w, h], "fps": f, "faces": [{"box":
[x, y, w, h], "label": str, "file": str}, ...]}``. Faces stay put for the whole video, so every
frame has the same ground truth and a tracker sees stable tracks.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .labels import LABELS

FOURCC = "MJPG"  # in every OpenCV build (no FFmpeg codec licensing surprises); use .avi


def pick_faces(data_root: str | Path, n: int, seed: int = 0, split: str = "test") -> list[tuple[Path, str]]:
    """n (file, label) pairs, labels cycling through the classes, files chosen by seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = LABELS[(i + seed) % len(LABELS)]
        files = sorted((Path(data_root) / split / label).glob("*.jpg"))
        if not files:
            raise FileNotFoundError(f"no faces in {Path(data_root) / split / label}")
        out.append((files[int(rng.integers(len(files)))], label))
    return out


def layout(n: int, size: tuple[int, int], face: int) -> list[tuple[int, int]]:
    """Top-left corners of n non-overlapping face cells on a grid that fits the frame."""
    w, h = size
    cols = max(1, int(np.ceil(np.sqrt(n * w / h))))
    rows = int(np.ceil(n / cols))
    cw, ch = w // cols, h // rows
    if cw < face or ch < face:
        raise ValueError(f"{n} faces of {face}px do not fit in {w}x{h}")
    return [((i % cols) * cw + (cw - face) // 2, (i // cols) * ch + (ch - face) // 2) for i in range(n)]


def background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth, mildly textured BGR backdrop (a flat one would flatter the detectors)."""
    w, h = size
    rng = np.random.default_rng(seed + 1000)
    noise = cv2.resize(rng.integers(60, 200, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(noise, (0, 0), 3)


def compose(size: tuple[int, int], faces: list[tuple[Path, str]], face: int, seed: int = 0):
    """One BGR frame with the faces pasted in, and its ground truth list."""
    frame = background(size, seed)
    truth = []
    for (path, label), (x, y) in zip(faces, layout(len(faces), size, face)):
        img = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (face, face), interpolation=cv2.INTER_LINEAR)
        frame[y:y + face, x:x + face] = img[:, :, None]
        truth.append({"box": [x, y, face, face], "label": label, "file": str(path)})
    return frame, truth


def make_video(path: str | Path, data_root: str | Path, n_faces: int = 1, frames: int = 30,
               size: tuple[int, int] = (640, 480), face: int = 120, fps: float = 15.0, seed: int = 0,
               truth_json: bool = True) -> dict:
    """Write an MJPG video of ``frames`` identical composited frames; return (and save) the truth."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame, faces = compose(size, pick_faces(data_root, n_faces, seed), face, seed) if n_faces else \
        (background(size, seed), [])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with {FOURCC}")
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    truth = {"frames": frames, "size": list(size), "fps": fps, "faces": faces}
    if truth_json:
        path.with_suffix(".json").write_text(json.dumps(truth, indent=1))
    return truth


def iou(a, b) -> float:
    """IoU of two [x, y, w, h] boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m edge_runtime.synthetic",
                                description="Write a test video of FER test faces composited onto larger frames "
                                            "(and OUT.json with the boxes and labels).")
    p.add_argument("out", help="video path (.avi, MJPG)")
    p.add_argument("--data", required=True, help="FER2013 root holding test/<emotion>/*.jpg")
    p.add_argument("--faces", type=int, default=1)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--size", default="640x480", help="frame size WxH")
    p.add_argument("--face", type=int, default=120, help="face size in pixels")
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    truth = make_video(a.out, a.data, a.faces, a.frames, (w, h), a.face)
    print(f"wrote {a.out}: {a.frames} frames {w}x{h}, faces {[f['label'] for f in truth['faces']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
