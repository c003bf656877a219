"""Edge runtime: the device-side truths (labels, preprocessing, crop geometry, manifest), the
Python API and the daemon.

    from edge_runtime import EmotionRecognizer
    er = EmotionRecognizer()        # the default model shipped in this package
    er.detect_emotions(frame)       # [{'box': [x, y, w, h], 'emotions': {...}, 'landmarks': ..., 'score': ...}]

Imports numpy and OpenCV only (plus LiteRT or onnxruntime); never TensorFlow. ``train``,
``export`` and ``benchmarks`` import the label list, preprocessing and manifest schema from here.
"""
from .api import EmotionRecognizer, FrameResult
from .config import DetectorConfig
from .geometry import CropSpec, Detections
from .labels import LABELS

__all__ = ["EmotionRecognizer", "FrameResult", "CropSpec", "DetectorConfig", "Detections", "LABELS"]
