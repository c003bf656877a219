"""The Python API: faces or frames in, emotions out, TensorFlow-free.

    from edge_runtime import EmotionRecognizer
    er = EmotionRecognizer()                  # the packaged default model, YuNet-n, calibrated crop
    er.predict(faces); er.predict_proba(faces)
    er.detect_emotions(frame)                 # [{'box': [x, y, w, h], 'emotions': {...}, ...}]

The daemon's per-frame path is ``EmotionRecognizer.analyze``: one code path for both.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import BackendError, load_backend, select_artifact
from .config import check_threads
from .detectors import DEFAULT_SIZE, calibrated_crop, make_detector
from .geometry import CropSpec, Detections, crop_faces
from .labels import LABELS
from .manifest import preprocess_spec, read_manifest
from .preprocess import preprocess_batch, to_gray

PACKAGED_ARTIFACTS = Path(__file__).resolve().parent / "models" / "cbilstm"


@dataclass
class FrameResult:
    """One frame through the pipeline: detections, the crop regions, the model inputs and outputs."""
    detections: Detections
    regions: np.ndarray   # (K, 4) x, y, w, h of each classified crop
    inputs: np.ndarray    # (K, size, size, 1) float32, what the model saw
    probs: np.ndarray     # (K, 7) in LABELS order
    ms: dict[str, float]  # detect, preprocess, classify


class EmotionRecognizer:
    """Facial-emotion recognition with an exported model, scikit-learn style.

    Parameters
    ----------
    artifacts : folder with ``manifest.json`` from ``python -m export`` (default: the model shipped
        in this package).
    backend : ``auto`` (int8 TFLite where LiteRT is installed, else ONNX), ``tflite``, ``onnx`` or an
        artifact name such as ``onnx-fp32``; ``precision`` narrows it (``int8``, ``fp32``).
    threads : inference (and detector) threads, 1 .. the CPUs available.
    detector : ``yunet`` (packaged, 5 landmarks) or ``haar``; ``detector_size`` the longer side of
        the frame it sees (0: its default), ``score`` its threshold.
    crop : a ``CropSpec``, or None for the crop calibrated for the detector.
    """

    classes_: tuple[str, ...] = LABELS

    def __init__(self, artifacts: str | os.PathLike | None = None, backend: str = "auto",
                 precision: str | None = None, threads: int = 1, providers: list[str] | None = None,
                 detector: str = "yunet", detector_size: int = 0, score: float = 0.4, min_face: int = 24,
                 max_faces: int = 32, detector_model: str = "", detector_runtime: str = "auto",
                 crop: CropSpec | None = None):
        check_threads(threads)
        self.manifest = read_manifest(artifacts or PACKAGED_ARTIFACTS)
        self.artifact = select_artifact(self.manifest, backend, precision)
        self.backend = load_backend(self.manifest, self.artifact, threads, providers)
        self.spec = preprocess_spec(self.manifest)
        self.detector_size = detector_size or DEFAULT_SIZE.get(detector, 512)
        self.detector = make_detector(detector, self.detector_size, min_face, max_faces, detector_model, threads,
                                      score, detector_runtime)
        self.crop = crop if crop is not None else calibrated_crop(detector)

    # --- faces (already cropped) ---------------------------------------------------------------
    def predict_proba(self, faces) -> np.ndarray:
        """Face crops (a list of images of any size and channels, or a uint8 (N, H, W) array) ->
        (N, 7) probabilities in ``classes_`` order."""
        batch = preprocess_batch(faces, self.spec)
        if len(batch) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        return self.backend.predict(batch)

    def predict(self, faces) -> list[str]:
        """Face crops -> one label per face."""
        return [LABELS[i] for i in self.predict_proba(faces).argmax(axis=1)]

    # --- frames ----------------------------------------------------------------------------------
    def analyze(self, image: np.ndarray) -> FrameResult:
        """One frame (gray, BGR, BGRA; uint8 or 16-bit) -> detections, crops, probabilities, timings."""
        t0 = time.perf_counter()
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = to_gray(image)
        dets = self.detector.detect(image)
        t1 = time.perf_counter()
        patches, regions = crop_faces(image, dets, self.crop)  # grey per patch: cheaper than per frame
        batch = preprocess_batch(patches, self.spec)
        t2 = time.perf_counter()
        probs = self.backend.predict(batch) if len(batch) else np.zeros((0, len(LABELS)), np.float32)
        t3 = time.perf_counter()
        return FrameResult(dets, regions, batch, probs,
                           {"detect": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "classify": (t3 - t2) * 1e3})

    def detect_emotions(self, image: np.ndarray) -> list[dict]:
        """One frame -> a list of faces with the `fer` package's keys: ``box`` [x, y, w, h] (ints),
        ``emotions`` {label: probability}, plus ``landmarks`` (5 [x, y] or None) and ``score``."""
        r = self.analyze(image)
        out = []
        for box, score, lm, p in zip(r.detections.boxes, r.detections.scores, r.detections.landmarks, r.probs):
            out.append({"box": [int(round(float(v))) for v in box],
                        "emotions": {lab: round(float(v), 4) for lab, v in zip(LABELS, p)},
                        "landmarks": None if np.isnan(lm).any() else [[round(float(x), 1), round(float(y), 1)]
                                                                      for x, y in lm],
                        "score": round(float(score), 4)})
        return out

    def top_emotion(self, image: np.ndarray) -> tuple[str, float] | tuple[None, None]:
        """The largest face's most likely emotion and its probability (`fer`'s ``top_emotion``)."""
        faces = self.detect_emotions(image)
        if not faces:
            return None, None
        face = max(faces, key=lambda f: f["box"][2] * f["box"][3])
        label = max(face["emotions"], key=face["emotions"].get)
        return label, face["emotions"][label]

    @property
    def runtime(self) -> str:
        return self.backend.runtime


__all__ = ["EmotionRecognizer", "FrameResult", "PACKAGED_ARTIFACTS", "BackendError"]
