"""The Python API: faces or frames in, emotions out, TensorFlow-free.

    from edge_runtime import EmotionRecognizer
    er = EmotionRecognizer()                  # the packaged model for this CPU, YuNet-n, calibrated crop
    er.predict(faces); er.predict_proba(faces)
    er.detect_emotions(frame)                 # [{'box': [x, y, w, h], 'emotions': {...}, ...}]

The daemon's per-frame path is ``EmotionRecognizer.analyze``: one code path for both.
"""
from __future__ import annotations

import numbers
import os
import time
from dataclasses import dataclass

import numpy as np

from .backends import BackendError, load_backend, select_artifact
from .config import DETECTOR_SIZES, ConfigError, DetectorConfig, check_threads
from .detectors import DEFAULT_SIZE, calibrated_crop, make_detector
from .geometry import CropSpec, Detections, crop_faces, landmark_list
from .labels import LABELS
from .manifest import read_manifest
from .packaged import AUTO, PackagedModelError, choose_model, packaged_dir
from .preprocess import preprocess_batch, to_gray


BOX_CONVENTIONS = tuple(DETECTOR_SIZES)  # the detectors whose box framing has a calibrated crop


@dataclass
class FrameResult:
    """One frame through the pipeline: the faces (``Detections`` with their crop regions and
    probabilities), what the model saw, and the time each step took."""
    detections: Detections
    inputs: np.ndarray    # (K, size, size, 1) float32, what the model saw
    ms: dict[str, float]  # detect, preprocess, classify

    @property
    def regions(self) -> np.ndarray:
        """(K, 4) x, y, w, h of each classified crop."""
        return self.detections.regions

    @property
    def probs(self) -> np.ndarray:
        """(K, 7) in LABELS order."""
        return self.detections.probs


class EmotionRecognizer:
    """Facial-emotion recognition with an exported model, scikit-learn style.

    Parameters
    ----------
    model : which model shipped in this package: ``auto`` (default: ``cbilstm`` on CPUs with int8 dot
        products, ``cbilstm-lite`` on CPUs without them, such as a Raspberry Pi 4), ``cbilstm`` or
        ``cbilstm-lite``. ``model_choice`` says what was chosen and why.
    artifacts : instead, a folder with ``manifest.json`` from ``python -m export``.
    backend : ``auto`` (int8 TFLite where LiteRT is installed, else ONNX), ``tflite``, ``onnx`` or an
        artifact name such as ``onnx-fp32``; ``precision`` narrows it (``int8``, ``fp32``).
    threads : inference (and detector) threads, 1 .. the CPUs available.
    detector : ``yunet`` (packaged, 5 landmarks) or ``haar``; ``detector_size`` the longer side of
        the frame it sees (0: its default), ``score`` its threshold. A ``DetectorConfig`` (the
        daemon's ``[detector]`` table) replaces all the detector arguments.
    crop : a ``CropSpec``, or None for the crop calibrated for the detector.
    """

    classes_: tuple[str, ...] = LABELS

    def __init__(self, artifacts: str | os.PathLike | None = None, backend: str = "auto",
                 precision: str | None = None, threads: int = 1, providers: list[str] | None = None,
                 detector: str | DetectorConfig = "yunet", detector_size: int = 0, score: float = 0.4,
                 min_face: int = 24, max_faces: int = 32, detector_model: str = "", detector_runtime: str = "auto",
                 crop: CropSpec | None = None, model: str = AUTO):
        if isinstance(threads, numbers.Integral) and not isinstance(threads, bool):
            threads = int(threads)
        check_threads(threads)
        if isinstance(providers, str):
            providers = [providers]
        if not isinstance(detector, DetectorConfig):
            detector = _detector_config(detector=detector, detector_size=detector_size, score=score,
                                        min_face=min_face, max_faces=max_faces, detector_model=detector_model,
                                        detector_runtime=detector_runtime)
        self.detector_size = detector.size or DEFAULT_SIZE[detector.type]
        # the detector first: its errors then come before the inference runtime's own start-up log
        self.detector = make_detector(detector, threads)
        if crop is not None and not isinstance(crop, CropSpec):
            raise TypeError(f"crop must be a CropSpec (edge_runtime.CropSpec) or None, got {type(crop).__name__}")
        if artifacts is not None and not isinstance(artifacts, (str, os.PathLike)):
            raise TypeError(f"artifacts must be a folder path, got {type(artifacts).__name__}")
        if artifacts:
            if model != AUTO:
                raise PackagedModelError(f"model {model!r} and artifacts {str(artifacts)!r} both name a model: "
                                         "give one")
            self.model_choice = "artifacts folder"
        else:
            name, self.model_choice = choose_model(model)
            artifacts = packaged_dir(name)
        self.manifest = read_manifest(artifacts)
        self.crop = crop if crop is not None else calibrated_crop(detector.type, self.manifest.model)
        self.artifact = select_artifact(self.manifest, backend, precision)
        self.backend = load_backend(self.manifest, self.artifact, threads, providers)
        self.spec = self.manifest.preprocessing
        self._crops = {detector.type: self.crop}  # per box convention (caller's boxes); a given crop: for all
        self._crop_given = crop is not None

    @classmethod
    def from_config(cls, cfg) -> "EmotionRecognizer":
        """From a daemon ``Config``'s ``[model]``, ``[detector]`` and ``[crop]`` sections: an artifacts
        folder replaces the packaged model; ``crop.mode = "calibrated"`` takes the fitted crop."""
        m, c = cfg.model, cfg.crop
        er = cls(m.artifacts or None, m.backend, m.precision or None, m.threads, list(m.providers) or None,
                 detector=cfg.detector, model=AUTO if m.artifacts else m.name,
                 crop=None if c.mode == "calibrated" else CropSpec(c.scale, c.dx, c.dy, c.level))
        if m.artifacts and m.name != AUTO:  # a profile names a packaged model, the site config its own folder
            er.model_choice = f"artifacts folder (replaces model.name = {m.name})"
        return er

    # --- faces (already cropped) ---------------------------------------------------------------
    def predict_proba(self, faces) -> np.ndarray:
        """Face crops (a list of images of any size and channels, or an (N, H, W[, C]) array) ->
        (N, 7) probabilities in ``classes_`` order. A single face goes in a list: ``[face]``."""
        batch = preprocess_batch(_face_list(faces), self.spec)
        if len(batch) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        return self.backend.predict(batch)

    def predict(self, faces) -> list[str]:
        """Face crops -> one label per face."""
        return [LABELS[i] for i in self.predict_proba(faces).argmax(axis=1)]

    # --- frames ----------------------------------------------------------------------------------
    def analyze(self, image: np.ndarray, regions=None, boxes=None, box_convention: str | None = None) -> FrameResult:
        """One frame (gray, BGR, BGRA; uint8 or 16-bit) -> detections, crops, probabilities, timings.
        ``regions`` (x, y, w, h rows): look for faces only there (the daemon passes the regions around
        its tracks between full-frame detections); None: the whole frame.
        ``boxes`` (x, y, w, h rows): faces your own detector found, classified without detecting;
        ``box_convention`` names the detector whose box framing they follow (one of
        ``BOX_CONVENTIONS``: "haar" for OpenCV's cascade, as the ``fer`` package uses; "yunet"), so the
        crop calibrated for that framing applies."""
        t0 = time.perf_counter()
        image = _frame(image)
        crop = self.crop
        if boxes is not None:
            if regions is not None:
                raise ValueError("give regions (where to detect) or boxes (faces already found), not both")
            crop = self._crop_for(box_convention)
            dets = Detections.from_boxes(_boxes(boxes))
        elif box_convention is not None:
            raise ValueError("box_convention describes boxes you pass: give boxes too")
        else:
            dets = self.detector.detect(image) if regions is None else self.detector.detect_regions(image, regions)
        t1 = time.perf_counter()
        patches, regions = crop_faces(image, dets, crop)  # grey per patch: cheaper than per frame
        batch = preprocess_batch(patches, self.spec)
        t2 = time.perf_counter()
        probs = self.backend.predict(batch) if len(batch) else np.zeros((0, len(LABELS)), np.float32)
        t3 = time.perf_counter()
        return FrameResult(dets.with_fields(regions=np.asarray(regions, np.float32).reshape(-1, 4), probs=probs), batch,
                           {"detect": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "classify": (t3 - t2) * 1e3})

    def detect_emotions(self, image: np.ndarray, face_rectangles=None, box_convention: str | None = None) -> list[dict]:
        """One frame -> a list of faces with the `fer` package's keys: ``box`` [x, y, w, h] (ints),
        ``emotions`` {label: probability}, plus ``landmarks`` (5 [x, y] or None) and ``score``.
        ``face_rectangles``: your own detector's boxes (as in `fer`), with ``box_convention`` naming
        its framing (see ``analyze``); the score of such a face is 1."""
        if face_rectangles is not None:
            r = self.analyze(image, boxes=face_rectangles, box_convention=box_convention)
        else:
            r = self.analyze(image, box_convention=box_convention)
        out = []
        for box, score, lm, p in zip(r.detections.boxes, r.detections.scores, r.detections.landmarks, r.probs):
            out.append({"box": [int(round(float(v))) for v in box],
                        "emotions": {lab: round(float(v), 4) for lab, v in zip(LABELS, p)},
                        "landmarks": landmark_list(lm),
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

    def _crop_for(self, convention: str | None) -> CropSpec:
        """The crop for boxes in ``convention``'s framing: the one given to the constructor, else the
        one calibrated for (that detector, this model)."""
        if convention not in BOX_CONVENTIONS:
            raise ValueError(f"box_convention must name the detector your boxes follow, one of "
                             f"{', '.join(BOX_CONVENTIONS)} (haar: OpenCV's cascade, as the fer package), "
                             f"not {convention!r}")
        if self._crop_given:
            return self.crop
        if convention not in self._crops:
            self._crops[convention] = calibrated_crop(convention, self.manifest.model)
        return self._crops[convention]


# The API's detector arguments and the [detector] keys they set: the table the layer is built from,
# read backwards when an error must name what the caller wrote.
_DETECTOR_ARGS = {"detector": "type", "detector_size": "size", "min_face": "min_size", "max_faces": "max_faces",
                  "detector_model": "yunet.model", "score": "yunet.score", "detector_runtime": "yunet.runtime"}


def _detector_config(**arguments) -> DetectorConfig:
    """The arguments as the daemon's [detector] table, under the same types and bounds."""
    def plain(v):  # numpy scalars as Python numbers, paths as strings, as a TOML file would give them
        return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else \
            float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else \
            str(v) if isinstance(v, os.PathLike) else v
    layer: dict = {}
    for argument, key in _DETECTOR_ARGS.items():
        *tables, name = key.split(".")
        table = layer
        for t in tables:
            table = table.setdefault(t, {})
        table[name] = plain(arguments[argument])
    try:
        return DetectorConfig.from_dict(layer, "EmotionRecognizer")
    except ConfigError as e:
        message = str(e)
        for argument, key in _DETECTOR_ARGS.items():
            message = message.replace(f"detector.{key}", argument)
        raise ConfigError(message) from None


def _boxes(boxes) -> np.ndarray:
    """Caller's boxes as an (N, 4) float array of x, y, w, h with finite values and positive sides."""
    try:
        b = np.asarray(boxes, np.float64)
    except (TypeError, ValueError):
        raise ValueError("boxes must be (x, y, w, h) rows of numbers") from None
    if b.size == 0:
        return np.zeros((0, 4), np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (x, y, w, h) rows, got shape {b.shape}")
    if not np.isfinite(b).all() or (b[:, 2:] <= 0).any():
        raise ValueError("boxes must be finite, with a positive width and height")
    return b.astype(np.float32)


def _face_list(faces):
    """A list of images or an (N, H, W[, C]) array; a lone 2-D image is refused (ambiguous)."""
    if faces is None or not hasattr(faces, "__len__"):
        raise TypeError(f"faces must be a list of images or an (N, H, W[, C]) array, got {type(faces).__name__}")
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        raise ValueError(f"faces is a single {faces.shape} image: pass a list, [face]")
    for f in faces:
        if np.asarray(f).size == 0:
            raise ValueError("faces holds an empty image")
    return faces


def _frame(image) -> np.ndarray:
    """One frame as uint8 gray, BGR or BGRA (16-bit and float in [0, 1] or [0, 255] are converted)."""
    if image is None:
        raise TypeError("image is None (a frame that failed to load?)")
    image = np.asarray(image)
    if image.size == 0 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image must be H x W (gray) or H x W x 1/3/4 (BGR, BGRA), got shape {image.shape}")
    return image if image.dtype == np.uint8 else to_gray(image)


__all__ = ["EmotionRecognizer", "FrameResult", "BOX_CONVENTIONS", "BackendError", "PackagedModelError"]
