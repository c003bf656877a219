"""Face detectors behind one small interface: ``detect(gray) -> int array (K, 4) of x, y, w, h``.

- ``haar``: OpenCV's frontal-face cascade from ``cv2.data`` (ships in opencv-python-headless 4.x;
  5.0 dropped ``CascadeClassifier``, hence the ``<5`` pin). Runs on a downscaled frame.
- ``blazeface``: MediaPipe's BlazeFace short-range TFLite model run by LiteRT (the classifier's
  runtime). Needs the model file: ``detector.model`` or ``$EDGE_BLAZEFACE``; no download.

Boxes come back in full-frame pixel coordinates, clipped to the frame, largest first.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

DETECTORS = ("haar", "blazeface")


class DetectorError(Exception):
    """The detector cannot be built (missing cascade or model file)."""


class Detector:
    name = "?"

    def detect(self, gray: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def _finish(boxes: np.ndarray, shape, max_faces: int) -> np.ndarray:
    """Clip to the frame, drop empty boxes, keep the largest max_faces."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.int32)
    h, w = shape[:2]
    b = np.asarray(boxes, np.float64)
    x1, y1 = np.clip(b[:, 0], 0, w), np.clip(b[:, 1], 0, h)
    x2, y2 = np.clip(b[:, 0] + b[:, 2], 0, w), np.clip(b[:, 1] + b[:, 3], 0, h)
    out = np.stack([x1, y1, x2 - x1, y2 - y1], 1).round().astype(np.int32)
    out = out[(out[:, 2] >= 4) & (out[:, 3] >= 4)]
    return out[np.argsort(-(out[:, 2] * out[:, 3]), kind="stable")][:max_faces]


class HaarDetector(Detector):
    name = "haar"

    def __init__(self, scale: float = 0.5, min_size: int = 24, max_faces: int = 32,
                 scale_factor: float = 1.1, min_neighbors: int = 4):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path)) if hasattr(cv2, "CascadeClassifier") else None
        if self.cascade is None or self.cascade.empty():
            raise DetectorError(f"OpenCV {cv2.__version__} has no usable Haar cascade ({path}); "
                                "install opencv-python-headless<5 or use detector.type = 'blazeface'")
        self.scale, self.min_size, self.max_faces = scale, min_size, max_faces
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def detect(self, gray: np.ndarray) -> np.ndarray:
        small = gray if self.scale == 1.0 else cv2.resize(gray, None, fx=self.scale, fy=self.scale,
                                                          interpolation=cv2.INTER_AREA)
        min_size = max(8, int(self.min_size * self.scale))
        boxes = self.cascade.detectMultiScale(small, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors, minSize=(min_size, min_size))
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4) / self.scale
        return _finish(boxes, gray.shape, self.max_faces)


def _blazeface_anchors(size: int = 128) -> np.ndarray:
    """SSD anchor centres of the short-range model: 16x16 cells x 2 + 8x8 cells x 6 = 896."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = size // stride
        ys, xs = np.mgrid[0:n, 0:n]
        centres = np.stack([(xs.ravel() + 0.5) / n, (ys.ravel() + 0.5) / n], 1)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order, keep = np.argsort(-scores), []
    x2, y2 = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) < iou]
    return keep


class BlazeFaceDetector(Detector):
    name = "blazeface"

    def __init__(self, model: str | Path | None = None, threads: int = 1, score: float = 0.5,
                 max_faces: int = 32, nms_iou: float = 0.3):
        from .backends import BackendError, _tflite_interpreter_class
        model = model or os.environ.get("EDGE_BLAZEFACE", "")
        if not model or not Path(model).is_file():
            raise DetectorError(f"BlazeFace model not found ({model or 'set detector.model or $EDGE_BLAZEFACE'})")
        try:
            Interpreter, _ = _tflite_interpreter_class()
        except BackendError as e:
            raise DetectorError(str(e)) from e
        self.interp = Interpreter(model_path=str(model), num_threads=max(1, threads))
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        outs = sorted(self.interp.get_output_details(), key=lambda d: -int(d["shape"][-1]))
        self.reg, self.cls = outs[0]["index"], outs[1]["index"]  # (1,896,16) boxes, (1,896,1) scores
        self.size = int(self.inp["shape"][1])
        self.anchors = _blazeface_anchors(self.size)
        self.score, self.max_faces, self.nms_iou = score, max_faces, nms_iou

    def detect(self, gray: np.ndarray) -> np.ndarray:
        h, w = gray.shape[:2]
        side = max(h, w)  # letterbox to a square so the model sees undistorted faces
        square = np.zeros((side, side), np.uint8)
        square[:h, :w] = gray
        x = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = np.repeat((x.astype(np.float32) / 127.5 - 1.0)[None, :, :, None], 3, axis=3)
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        raw = self.interp.get_tensor(self.reg)[0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(self.interp.get_tensor(self.cls)[0, :, 0], -80, 80)))
        keep = scores >= self.score
        if not keep.any():
            return np.zeros((0, 4), np.int32)
        raw, scores, anchors = raw[keep], scores[keep], self.anchors[keep]
        cx = raw[:, 0] / self.size + anchors[:, 0]
        cy = raw[:, 1] / self.size + anchors[:, 1]
        bw, bh = raw[:, 2] / self.size, raw[:, 3] / self.size
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], 1) * side
        boxes = boxes[_nms(boxes, scores, self.nms_iou)]
        return _finish(boxes, gray.shape, self.max_faces)


def make_detector(kind: str = "haar", scale: float = 0.5, min_size: int = 40, max_faces: int = 32,
                  model: str = "", threads: int = 1, score: float = 0.5) -> Detector:
    if kind == "haar":
        return HaarDetector(scale=scale, min_size=min_size, max_faces=max_faces)
    if kind == "blazeface":
        return BlazeFaceDetector(model or None, threads=threads, score=score, max_faces=max_faces)
    raise DetectorError(f"unknown detector {kind!r} (choose from {', '.join(DETECTORS)})")
