"""Box and crop geometry: the one ``Detections`` record that every step passes on (detector ->
crop -> tracker -> events), IoU, NMS, clipping, and the crop that turns a detector's box into the
framing the classifier was trained on.

Boxes are float ``x, y, w, h`` in full-frame pixels. Landmarks are five (x, y) points in YuNet's
order: right eye, left eye, nose tip, right and left mouth corner (the subject's right is the
image's left); NaN where a detector has none (Haar).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace

import cv2
import numpy as np

N_LANDMARKS = 5


@dataclass(frozen=True)
class Detections:
    """K faces of one frame, one row each in every array: what the detector found, then (after the crop
    and the classifier) each face's crop region and probabilities, then (after the tracker) its track id
    and smoothed probabilities. Shape-checked; ``take`` slices all."""
    boxes: np.ndarray      # (K, 4) float32 x, y, w, h
    scores: np.ndarray     # (K,) float32 in [0, 1]
    landmarks: np.ndarray  # (K, 5, 2) float32, NaN when unknown
    regions: np.ndarray | None = None  # (K, 4) x, y, w, h of each face's crop, once cropped
    probs: np.ndarray | None = None    # (K, C) class probabilities in LABELS order, once classified
    track_ids: np.ndarray | None = None  # (K,) int64, the track each face continues or starts, once tracked
    smoothed: np.ndarray | None = None   # (K, C) its track's smoothed probabilities, once tracked

    def __post_init__(self):
        k = len(self.boxes)
        want = {"boxes": (k, 4), "scores": (k,), "landmarks": (k, N_LANDMARKS, 2), "regions": (k, 4),
                "track_ids": (k,)}
        for name, shape in want.items():
            a = getattr(self, name)
            if a is not None and np.shape(a) != shape:
                raise ValueError(f"Detections.{name} has shape {np.shape(a)}, not {shape} for {k} faces")
        for name in ("probs", "smoothed"):
            a = getattr(self, name)
            if a is not None and (np.ndim(a) != 2 or len(a) != k):
                raise ValueError(f"Detections.{name} has shape {np.shape(a)}, not ({k}, classes)")
        if self.probs is not None and self.smoothed is not None and np.shape(self.smoothed) != np.shape(self.probs):
            raise ValueError(f"Detections.smoothed has shape {np.shape(self.smoothed)}, probs {np.shape(self.probs)}")
        if self.track_ids is not None and np.asarray(self.track_ids).dtype.kind not in "iu":
            raise ValueError(f"Detections.track_ids must be integers, not {np.asarray(self.track_ids).dtype}")

    def with_fields(self, **values) -> "Detections":
        """The same faces with more per-face arrays, e.g. ``with_fields(regions=..., probs=...)``."""
        return replace(self, **values)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros((0, N_LANDMARKS, 2), np.float32))

    @classmethod
    def from_boxes(cls, boxes, scores=None, landmarks=None) -> "Detections":
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        k = len(boxes)
        scores = np.ones(k, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(k)
        lm = (np.full((k, N_LANDMARKS, 2), np.nan, np.float32) if landmarks is None
              else np.asarray(landmarks, np.float32).reshape(k, N_LANDMARKS, 2))
        return cls(boxes, scores, lm)

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, idx) -> "Detections":
        idx = np.asarray(idx, np.int64).reshape(-1)
        return Detections(*(None if a is None else a[idx] for a in (getattr(self, f.name) for f in fields(self))))

    def has_landmarks(self) -> np.ndarray:
        return ~np.isnan(self.landmarks).any(axis=(1, 2))


def landmark_list(lm: np.ndarray) -> list[list[float]] | None:
    """One face's five landmarks as [x, y] lists rounded to 0.1 px (events, API), or None (Haar)."""
    return None if np.isnan(lm).any() else [[round(float(x), 1), round(float(y), 1)] for x, y in lm]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x, y, w, h boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y2 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def iou(a, b) -> float:
    """IoU of two x, y, w, h boxes."""
    return float(iou_matrix(a, b)[0, 0])


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order, keep = np.argsort(-scores, kind="stable"), []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(int(i))
        order = rest[iou_matrix(boxes[i], boxes[rest])[0] < iou_threshold]
    return np.asarray(keep, np.int64)


def clip_boxes(boxes: np.ndarray, shape) -> np.ndarray:
    """Clip x, y, w, h boxes to a frame of ``shape`` (h, w, ...)."""
    h, w = shape[:2]
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    x1, y1 = np.clip(b[:, 0], 0, w), np.clip(b[:, 1], 0, h)
    x2, y2 = np.clip(b[:, 0] + b[:, 2], 0, w), np.clip(b[:, 1] + b[:, 3], 0, h)
    return np.stack([x1, y1, x2 - x1, y2 - y1], 1)


def finish(dets: Detections, shape, min_size: float, max_faces: int) -> Detections:
    """Clip to the frame, drop boxes under ``min_size`` px, keep the ``max_faces`` best-scoring."""
    if len(dets) == 0:
        return dets
    boxes = clip_boxes(dets.boxes, shape)
    ok = np.flatnonzero((boxes[:, 2] >= min_size) & (boxes[:, 3] >= min_size))
    ok = ok[np.argsort(-dets.scores[ok], kind="stable")][:max_faces]
    return Detections(boxes[ok], dets.scores[ok], dets.landmarks[ok])


@dataclass(frozen=True)
class CropSpec:
    """Where the classifier's square crop sits relative to a detector's box.

    side = ``scale`` x the box's geometric mean side; centre = box centre + (``dx``, ``dy``) x that
    side; with ``level`` the crop is rotated so the eyes are level (needs landmarks). Fitted per
    detector by ``python -m benchmarks.calibrate`` and shipped in ``edge_runtime/crops.json``.
    """
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    level: bool = False

    def __post_init__(self):
        for name in ("scale", "dx", "dy"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool):
                raise ValueError(f"crop {name} must be a number, got {v!r}")
        if not isinstance(self.level, (bool, np.bool_)):  # "no" is a true string: never read as True
            raise ValueError(f"crop level must be true or false, got {self.level!r}")
        if not (0.3 <= self.scale <= 3.0 and abs(self.dx) <= 1.0 and abs(self.dy) <= 1.0):
            raise ValueError(f"crop scale must be in [0.3, 3] and |dx|, |dy| <= 1 (got {self})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CropSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def crop_squares(dets: Detections, spec: CropSpec) -> np.ndarray:
    """(K, 4) centre x, centre y, side, angle in degrees of each face's crop. Unrotated crops are
    pixel-aligned (integer corner and side), so cutting them is an exact slice."""
    b = dets.boxes.astype(np.float64)
    side = np.maximum(2.0, np.round(np.sqrt(np.maximum(b[:, 2] * b[:, 3], 1.0)) * spec.scale))
    box_side = np.sqrt(np.maximum(b[:, 2] * b[:, 3], 1.0))
    x1 = np.round(b[:, 0] + b[:, 2] / 2 + spec.dx * box_side - side / 2)
    y1 = np.round(b[:, 1] + b[:, 3] / 2 + spec.dy * box_side - side / 2)
    angle = np.zeros(len(b))
    if spec.level and len(b):
        ok = dets.has_landmarks()
        eye_r, eye_l = dets.landmarks[:, 0].astype(np.float64), dets.landmarks[:, 1].astype(np.float64)
        d = eye_l - eye_r
        angle[ok] = np.degrees(np.arctan2(d[ok, 1], d[ok, 0]))
    return np.stack([x1 + side / 2, y1 + side / 2, side, angle], 1)


def square_to_box(sq: np.ndarray) -> np.ndarray:
    """Axis-aligned x, y, w, h of crop squares (for events; rotation ignored)."""
    sq = np.asarray(sq, np.float64).reshape(-1, 4)
    return np.stack([sq[:, 0] - sq[:, 2] / 2, sq[:, 1] - sq[:, 2] / 2, sq[:, 2], sq[:, 2]], 1)


def cut_square(gray: np.ndarray, cx: float, cy: float, side: float, angle: float = 0.0) -> np.ndarray:
    """The square patch (native resolution, edges replicated past the frame) centred at cx, cy,
    rotated by ``angle`` degrees about its centre."""
    n = max(2, int(math.ceil(side)))
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(angle), n / side)
    m[:, 2] += n / 2 - np.array([cx, cy])  # move the square's centre to the patch's centre
    return cv2.warpAffine(gray, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_faces(gray: np.ndarray, dets: Detections, spec: CropSpec) -> tuple[list[np.ndarray], np.ndarray]:
    """-> (the native-resolution crop of each face, their x, y, w, h regions)."""
    squares = crop_squares(dets, spec)
    return [cut_square(gray, *sq) for sq in squares], square_to_box(squares)
