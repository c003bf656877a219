"""Synthetic test videos: FER faces composited onto larger frames at known places.

Used by the tests, ``benchmarks`` and the crop calibration, so the ground truth format is part of
the API: ``{"frames": N, "size": [w, h], "fps": f, "faces": [{"box": [x, y, w, h], "label": str,
"file": str}, ...]}`` for a still scene (``make_video``: every frame the same), plus
``"per_frame": [[{... "id": int, "visible": float}, ...], ...]`` for scenes that change
(``shuffled_scene``: a new face, size, place and backdrop every frame; ``moving_scene``: 2-4 faces
drifting, crossing, entering and leaving, each with an identity).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from .geometry import iou  # noqa: F401  (re-exported: tests match boxes with it)
from .labels import LABELS
from .manifest import atomic_write_text
from .cli import command
from .outputs import add_overwrite_flag, claim_file, record_file

WRITER = "python -m edge_runtime.synthetic"  # its name in ownership ledgers

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
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with {FOURCC}")
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    tmp.replace(path)
    record_file(path, WRITER)
    truth = {"frames": frames, "size": list(size), "fps": fps, "faces": faces}
    if truth_json:
        atomic_write_text(path.with_suffix(".json"), json.dumps(truth, indent=1))
        record_file(path.with_suffix(".json"), WRITER)
    return truth


def paste(frame: np.ndarray, path: str | Path, x: int, y: int, side: int) -> float:
    """Paste a face resized to ``side`` px with its top-left at x, y (clipped); -> the visible share."""
    img = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (side, side), interpolation=cv2.INTER_LINEAR)
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = max(0, x), max(0, y), min(w, x + side), min(h, y + side)
    if x2 <= x1 or y2 <= y1:
        return 0.0
    frame[y1:y2, x1:x2] = img[y1 - y:y2 - y, x1 - x:x2 - x, None]
    return (x2 - x1) * (y2 - y1) / side ** 2


def shuffled_scene(faces: list[tuple[Path, str]], size=(640, 480), sides=(64, 200), seed: int = 0):
    """One face per frame, each a new face at a random size in ``sides``, a random place and on a
    new backdrop: no temporal help for a detector or tracker. Yields (BGR frame, truth list)."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i, (path, label) in enumerate(faces):
        side = int(rng.integers(sides[0], sides[1] + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        frame = background(size, seed * 100_003 + i)
        paste(frame, path, x, y, side)
        yield frame, [{"box": [x, y, side, side], "label": label, "file": str(path), "id": i, "visible": 1.0}]


def small_scene(faces: list[tuple[Path, str]], frames: int, size=(640, 480), sides=(64, 200), hold: int = 15,
                seed: int = 0):
    """One face at a time on a plain grey background (where Haar is at its best), each at a random
    size in ``sides`` and place, staying ``hold`` frames (a second at 15 fps) before the next face
    replaces it. Yields (BGR frame, truth list)."""
    rng = np.random.default_rng(seed)
    w, h = size
    plain = np.full((h, w, 3), 128, np.uint8)
    for i in range(frames):
        k = i // hold
        if i % hold == 0:
            path, label = faces[k % len(faces)]
            side = int(rng.integers(sides[0], sides[1] + 1))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        frame = plain.copy()
        paste(frame, path, x, y, side)
        yield frame, [{"box": [x, y, side, side], "label": label, "file": str(path), "id": k, "visible": 1.0}]


def moving_scene(faces: list[tuple[Path, str]], frames: int, size=(640, 480), sides=(64, 200),
                 max_faces: int = 4, seed: int = 0):
    """2..max_faces faces drifting across a still backdrop: they enter from an edge, cross one
    another and leave; a new face (the next of ``faces``) enters when one has left. Yields (BGR
    frame, truth list) with each face's identity and visible share (off-frame and occlusion)."""
    rng = np.random.default_rng(seed)
    w, h = size
    back = background(size, seed)
    pool = iter(enumerate(faces))
    live: list[dict] = []

    def enter(inside: bool = False):
        ident, (path, label) = next(pool)
        side = int(rng.integers(sides[0], sides[1] + 1))
        edge = int(rng.integers(4))
        if inside:  # the first faces start in view, so even a short video has whole faces
            live.append({"id": ident, "path": path, "label": label, "side": side,
                         "pos": np.array([rng.uniform(0, w - side), rng.uniform(0, h - side)]),
                         "v": rng.uniform(2.0, 5.0) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])})
            return
        speed = rng.uniform(2.0, 5.0)
        if edge < 2:  # left / right edge, moving across
            x = -side + 1.0 if edge == 0 else w - 1.0
            y = rng.uniform(0, h - side)
            v = np.array([speed if edge == 0 else -speed, rng.uniform(-1, 1)])
        else:  # top / bottom
            x = rng.uniform(0, w - side)
            y = -side + 1.0 if edge == 2 else h - 1.0
            v = np.array([rng.uniform(-1, 1), speed if edge == 2 else -speed])
        live.append({"id": ident, "path": path, "label": label, "side": side, "pos": np.array([x, y]), "v": v})

    target = int(rng.integers(2, max_faces + 1))
    for _ in range(target):
        enter(inside=True)
    for _ in range(frames):
        frame = back.copy()
        truth = []
        cover = np.zeros((h, w), np.int32) - 1
        for k, f in enumerate(live):
            x, y = (int(round(c)) for c in f["pos"])
            vis = paste(frame, f["path"], x, y, f["side"])
            x1, y1, x2, y2 = max(0, x), max(0, y), min(w, x + f["side"]), min(h, y + f["side"])
            if vis > 0:
                cover[y1:y2, x1:x2] = k
            truth.append({"box": [x, y, f["side"], f["side"]], "label": f["label"], "file": str(f["path"]),
                          "id": f["id"], "visible": vis})
        for k, t in enumerate(truth):  # later faces are pasted over earlier ones
            x, y, s, _ = t["box"]
            region = cover[max(0, y):max(0, y + s), max(0, x):max(0, x + s)]
            t["visible"] = round(float((region == k).sum()) / s ** 2, 4)
        yield frame, [t for t in truth if t["visible"] > 0]
        for f in live:
            f["pos"] = f["pos"] + f["v"]
        gone = [f for f in live if f["pos"][0] > w or f["pos"][1] > h or f["pos"][0] < -f["side"]
                or f["pos"][1] < -f["side"]]
        for f in gone:
            live.remove(f)
        while len(live) < target:
            enter()


def write_scene(path: str | Path, scene, fps: float = 15.0) -> dict:
    """Write a scene's frames as an MJPG video and OUT.json with the per-frame truth; -> the truth."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    writer, per_frame, size = None, [], None
    for frame, truth in scene:
        if writer is None:
            size = (frame.shape[1], frame.shape[0])
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC), fps, size)
            if not writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {path} with {FOURCC}")
        writer.write(frame)
        per_frame.append(truth)
    if writer is None:
        raise ValueError("the scene has no frames")
    writer.release()
    tmp.replace(path)
    truth = {"frames": len(per_frame), "size": list(size), "fps": fps, "faces": [], "per_frame": per_frame}
    atomic_write_text(path.with_suffix(".json"), json.dumps(truth))
    record_file(path, WRITER)
    record_file(path.with_suffix(".json"), WRITER)
    return truth


def frame_truth(truth: dict, index: int) -> list[dict]:
    """The faces in frame ``index`` of a video written by this module."""
    return truth["per_frame"][index] if truth.get("per_frame") else truth["faces"]


@command("python -m edge_runtime.synthetic", bad_input=(ValueError, RuntimeError, OSError))  # OutputError is a ValueError
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
    p.add_argument("--moving", action="store_true",
                   help="2-4 faces (at most --faces) of 64-200 px drifting, crossing, entering and leaving")
    add_overwrite_flag(p)
    a = p.parse_args(argv)
    for path, flag in ((a.out, "OUT"), (str(Path(a.out).with_suffix(".json")), "OUT's truth file")):
        claim_file(path, writer=WRITER, data=[a.data], flag=flag, overwrite=a.overwrite)
    return _write(a)  # a bad --size, an unwritable suffix or folder: bad input


def _write(a) -> int:
    try:
        w, h = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {a.size!r} should be WIDTHxHEIGHT, e.g. 640x480") from None
    if a.moving:
        faces = pick_faces(a.data, max(8, a.frames // 20), seed=0)
        truth = write_scene(a.out, moving_scene(faces, a.frames, (w, h), max_faces=max(2, a.faces)))
        ids = {f["id"] for fr in truth["per_frame"] for f in fr}
        print(f"wrote {a.out}: {a.frames} frames {w}x{h}, {len(ids)} faces moving through")
        return 0
    truth = make_video(a.out, a.data, a.faces, a.frames, (w, h), a.face)
    print(f"wrote {a.out}: {a.frames} frames {w}x{h}, faces {[f['label'] for f in truth['faces']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
