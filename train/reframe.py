"""Training faces in the framing the device gives them: the detector's box, then the calibrated crop.

The daemon never sees a face framed the way FER2013 framed it: it sees the crop that its detector's
box and ``edge_runtime/crops.json`` make. Here each training face is pasted at a random size
(64-200 px) and place onto a random 640x480 backdrop, as in the pipeline benchmark's videos. The
packaged detector then finds it, and the calibrated crop is cut and resized to the model's input,
with the daemon's own functions. A face the detector misses keeps its FER framing.

``recipe.reframe`` (train/models.py Recipe; train/fit.py) is the share of training faces shown in this framing at each step.
The arrays are cached under ``.cache/reframe``, keyed by the faces, the detector, the crop and the seed.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from edge_runtime.config import DetectorConfig
from edge_runtime.detectors import calibrated_crop, make_detector
from edge_runtime.geometry import crop_faces, iou_matrix
from edge_runtime.manifest import atomic_write_bytes
from edge_runtime.paths import cache_dir
from edge_runtime.preprocess import PreprocessSpec, to_gray, to_uint8
from edge_runtime.synthetic import background

from .data import Split

FRAME = (640, 480)
SIDES = (64, 200)  # face sizes in the frame, px: the pipeline benchmark's range
MIN_IOU = 0.3  # a detection overlapping the pasted face less than this is not that face


def _cache_path(split: Split, spec: PreprocessSpec, detector, crop, seed: int) -> Path:
    key = json.dumps([split.files_hash(), spec.to_dict(), type(detector).__name__,
                      getattr(detector, "model", None), getattr(detector, "size", None), crop.to_dict(), seed,
                      FRAME, SIDES], sort_keys=True)
    root = cache_dir("reframe")
    return root / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def reframe_one(face: np.ndarray, detector, crop, spec: PreprocessSpec, rng: np.random.Generator) -> np.ndarray | None:
    """One grey face pasted into a random frame, detected and cropped as the daemon would; None if missed."""
    w, h = FRAME
    side = int(rng.integers(SIDES[0], SIDES[1] + 1))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    frame = background(FRAME, int(rng.integers(2**31)))
    frame[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)[:, :, None]
    dets = detector.detect(frame)
    if not len(dets):
        return None
    overlap = iou_matrix(np.array([[x, y, side, side]], np.float32), dets.boxes)[0]
    best = int(overlap.argmax())
    if overlap[best] < MIN_IOU:
        return None
    patches, _ = crop_faces(to_gray(frame), dets.take([best]), crop)
    return to_uint8(patches[0], spec)


def reframe_split(split: Split, spec: PreprocessSpec, detector_kind: str = "yunet", seed: int = 0,
                  progress: bool = True, model: str = "cbilstm") -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 faces in the device's framing for ``model``, aligned with ``split``; bool mask of faces found)."""
    detector = make_detector(DetectorConfig(type=detector_kind))
    crop = calibrated_crop(detector_kind, model)
    path = _cache_path(split, spec, detector, crop, seed)
    if path.is_file():
        try:
            with np.load(path) as z:
                if z["images"].shape == split.images.shape:
                    return z["images"], z["found"]
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    rng = np.random.default_rng(seed)
    images, found = split.images.copy(), np.zeros(len(split), bool)
    for i in tqdm(range(len(split)), desc=f"reframe ({detector_kind})", unit="face", disable=not progress or None):
        patch = reframe_one(split.images[i], detector, crop, spec, rng)
        if patch is not None:
            images[i], found[i] = patch, True
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, found=found)
    atomic_write_bytes(path, buf.getvalue())
    return images, found
