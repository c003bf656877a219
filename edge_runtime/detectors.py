"""Face detectors behind one small interface: ``detect(image) -> Detections`` (full-frame pixels,
best score first).

- ``yunet`` (default): the YuNet-n face detector shipped in ``edge_runtime/models/`` (Apache-2.0,
  sha256-verified at load), run by onnxruntime or OpenCV's DNN module on the frame resized so its
  longer side is ``size``; our own vectorised decoding keeps the five landmarks. YuNet-n at 512 px,
  score 0.4 was chosen on validation composites (docs/pipeline.md).
- ``haar``: OpenCV's frontal-face cascade from ``cv2.data`` (no landmarks, slower, misses more).
"""
from __future__ import annotations

import json
import logging
import threading
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .config import DETECTOR_SIZES, DetectorConfig
from .geometry import CropSpec, Detections, finish, nms
from .manifest import sha256_file, unique_keys

log = logging.getLogger(__name__)

MODELS = Path(__file__).resolve().parent / "models"
DETECTORS = tuple(DETECTOR_SIZES)
DEFAULT_SIZE = DETECTOR_SIZES  # longer side of the frame each detector sees, px
RUNTIMES = ("auto", "onnxruntime", "opencv")
# Packaged detector models: file -> sha256 (verified before loading). See models/NOTICE.
PACKAGED = {"yunet_n": ("yunet_n.onnx", "ade75ae0241e2801a1be4e79cf88ac0c4494c4753b9fc432eaa4ef5eed5507ad")}
DEFAULT_YUNET = "yunet_n"
STRIDES = (8, 16, 32)


class DetectorError(Exception):
    """The detector cannot be built (missing or damaged model file, missing runtime)."""


class Detector:
    name = "?"

    def detect(self, image: np.ndarray) -> Detections:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: DetectorConfig, size: int, threads: int) -> "Detector":
        raise NotImplementedError

    def detect_regions(self, image: np.ndarray, regions: np.ndarray) -> Detections:
        """Faces inside ``regions`` (x, y, w, h, full-frame pixels) only, seen at the scale the full frame
        would be seen at: far fewer pixels when faces are few and tracked. This base version runs
        ``detect`` on the whole frame (a detector without a cheaper way)."""
        return self.detect(image)


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Gray, BGR or BGRA uint8 -> BGR uint8."""
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    return image if image.shape[2] == 3 else cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)


def downscale(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longer side is at most ``size`` (never up); -> (image, factor applied)."""
    h, w = image.shape[:2]
    f = min(1.0, size / max(h, w))
    if f == 1.0:
        return image, 1.0
    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_LINEAR), f


class HaarDetector(Detector):
    name = "haar"

    def __init__(self, size: int = 320, min_size: int = 40, max_faces: int = 32,
                 scale_factor: float = 1.1, min_neighbors: int = 4):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path)) if hasattr(cv2, "CascadeClassifier") else None
        if self.cascade is None or self.cascade.empty():
            raise DetectorError(f"OpenCV {cv2.__version__} has no usable Haar cascade ({path}); "
                                "install opencv-python-headless<5 or use detector.type = 'yunet'")
        self.size, self.min_size, self.max_faces = size, min_size, max_faces
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self._lock = threading.Lock()  # OpenCV does not document CascadeClassifier as thread-safe

    @classmethod
    def from_config(cls, cfg: DetectorConfig, size: int, threads: int) -> "HaarDetector":
        return cls(size=size, min_size=cfg.min_size, max_faces=cfg.max_faces)

    def detect(self, image: np.ndarray) -> Detections:
        gray = image if image.ndim == 2 else cv2.cvtColor(to_bgr(image), cv2.COLOR_BGR2GRAY)
        small, f = downscale(gray, self.size)
        min_px = max(8, int(self.min_size * f))
        with self._lock:
            boxes = self.cascade.detectMultiScale(small, scaleFactor=self.scale_factor,
                                                  minNeighbors=self.min_neighbors, minSize=(min_px, min_px))
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) / f
        scores = (boxes[:, 2] * boxes[:, 3]) / max(1.0, float(gray.shape[0] * gray.shape[1]))  # larger first
        return finish(Detections.from_boxes(boxes, scores), gray.shape, self.min_size, self.max_faces)


@lru_cache(maxsize=8)
def _priors(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid-cell origins (col, row) and strides of every YuNet output row, strides 8, 16, 32."""
    cells, strides = [], []
    for s in STRIDES:
        rows, cols = np.mgrid[0:height // s, 0:width // s]
        cells.append(np.stack([cols.ravel(), rows.ravel()], 1))
        strides.append(np.full(cols.size, s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)[:, None]


def decode_yunet(outputs: dict[str, np.ndarray], width: int, height: int, score: float) -> Detections:
    """YuNet's per-stride heads -> Detections in the padded input's pixels (before NMS)."""
    cat = {k: np.concatenate([outputs[f"{k}_{s}"].reshape(-1, n) for s in STRIDES])
           for k, n in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))}
    scores = np.sqrt(np.clip(cat["cls"][:, 0], 0, 1) * np.clip(cat["obj"][:, 0], 0, 1))
    keep = np.flatnonzero(scores >= score)
    if len(keep) == 0:
        return Detections.empty()
    cells, strides = _priors(width, height)
    cells, strides, bbox = cells[keep], strides[keep], cat["bbox"][keep]
    centre = (cells + bbox[:, :2]) * strides
    wh = np.exp(np.clip(bbox[:, 2:], -10, 10)) * strides
    boxes = np.concatenate([centre - wh / 2, wh], 1)
    kps = (cat["kps"][keep].reshape(-1, 5, 2) + cells[:, None, :]) * strides[:, :, None]
    return Detections(boxes.astype(np.float32), scores[keep].astype(np.float32), kps.astype(np.float32))


OUTPUTS = {f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in STRIDES}


class _OrtNet:
    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort
        from .backends import onnx_session_options
        try:
            self.sess = ort.InferenceSession(str(path), onnx_session_options(threads),
                                             providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for unreadable or invalid files
            raise DetectorError(f"onnxruntime cannot load detector model {path}: {_first_line(e)}") from None
        inp = self.sess.get_inputs()
        self.names = [o.name for o in self.sess.get_outputs()]
        shape = inp[0].shape if len(inp) == 1 else []
        if len(inp) != 1 or inp[0].name != "input" or len(shape) != 4 or shape[1] != 3 or set(self.names) != OUTPUTS:
            raise DetectorError(f"{path} is not a YuNet face detector (inputs {[i.name for i in inp]}, "
                                f"outputs {sorted(self.names)[:3]}…)")
        if any(isinstance(d, int) for d in shape[2:]):
            raise DetectorError(f"{path} has a fixed {shape[2]}x{shape[3]} input: make it size-free with "
                                f"python -m export.yunet {path} OUT.onnx (or set detector.yunet.runtime = 'opencv')")
        self.runtime = f"onnxruntime {ort.__version__}"

    def run(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.sess.run(None, {"input": blob})))


class _CvNet:
    def __init__(self, path: Path, threads: int):
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as e:
            raise DetectorError(f"OpenCV cannot load detector model {path}: {_first_line(e)}") from None
        self.names = list(self.net.getUnconnectedOutLayersNames())
        if set(self.names) != OUTPUTS:
            raise DetectorError(f"{path} is not a YuNet face detector (outputs {sorted(self.names)[:3]}…)")
        self.runtime = f"opencv-dnn {cv2.__version__}"
        self._lock = threading.Lock()  # setInput + forward share the net's state

    def run(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self.net.setInput(blob)
            return dict(zip(self.names, [o.copy() for o in self.net.forward(self.names)]))


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and ln.strip() != ">"]
    return (lines[-1] if lines else type(e).__name__)[:200]


def resolve_model(model: str) -> tuple[Path, str | None]:
    """'' or a packaged name -> (shipped file, its pinned sha256); a path -> (path, None)."""
    name = model or DEFAULT_YUNET
    if name in PACKAGED:
        file, sha = PACKAGED[name]
        return MODELS / file, sha
    path = Path(model).expanduser()
    if not path.is_file():
        raise DetectorError(f"detector model {model!r} not found (packaged: {', '.join(PACKAGED)}, or a YuNet .onnx)")
    return path, None


class YuNetDetector(Detector):
    name = "yunet"

    @classmethod
    def from_config(cls, cfg: DetectorConfig, size: int, threads: int) -> "YuNetDetector":
        y = cfg.yunet
        return cls(y.model, size=size, score=y.score, min_size=cfg.min_size, max_faces=cfg.max_faces,
                   threads=threads, runtime=y.runtime)

    def __init__(self, model: str = "", size: int = 512, score: float = 0.4, nms_iou: float = 0.3,
                 min_size: int = 24, max_faces: int = 32, threads: int = 1, runtime: str = "auto"):
        path, sha = resolve_model(model)
        if sha is not None:
            if not path.is_file():
                raise DetectorError(f"packaged detector model {path} is missing: reinstall fer-edge")
            got = sha256_file(path)
            if got != sha:
                raise DetectorError(f"detector model {path} sha256 {got[:12]}… != pinned {sha[:12]}…: reinstall fer-edge")
        self.net = self._load(path, threads, runtime)
        self.size, self.score, self.nms_iou = size, score, nms_iou
        self.min_size, self.max_faces = min_size, max_faces
        self.model = path.name

    @staticmethod
    def _load(path: Path, threads: int, runtime: str):
        if runtime not in RUNTIMES:
            raise DetectorError(f"detector.yunet.runtime must be one of {', '.join(RUNTIMES)} (got {runtime!r})")
        if runtime in ("auto", "onnxruntime"):
            try:
                return _OrtNet(path, threads)
            except ImportError:
                if runtime == "onnxruntime":
                    raise DetectorError("detector.yunet.runtime = onnxruntime but it is not installed: "
                                        "pip install onnxruntime") from None
        return _CvNet(path, threads)

    @property
    def runtime(self) -> str:
        return self.net.runtime

    def detect(self, image: np.ndarray) -> Detections:
        small, f = downscale(to_bgr(image), self.size)
        dets = self._run(small)
        if len(dets) == 0:
            return dets
        dets = dets.take(nms(dets.boxes, dets.scores, self.nms_iou))
        dets = Detections(dets.boxes / f, dets.scores, dets.landmarks / f)
        return finish(dets, image.shape, self.min_size, self.max_faces)

    def _run(self, small: np.ndarray) -> Detections:
        """The network on a BGR image as it is (padded to multiples of 32), before NMS."""
        h, w = small.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32  # the network's strides need multiples of 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = small.transpose(2, 0, 1)
        return decode_yunet(self.net.run(blob), pw, ph, self.score)

    def detect_regions(self, image: np.ndarray, regions: np.ndarray) -> Detections:
        bgr = to_bgr(image)
        H, W = bgr.shape[:2]
        f = min(1.0, self.size / max(H, W))  # the full frame's scale: faces look as they would there
        found = []
        for x0, y0, x1, y1 in merge_regions(regions, W, H):
            # align the region to the full frame's 32-pixel grid (the network's largest stride, at its
            # scale) and grow it to whole cells with the frame's own pixels, not padding: the network
            # then sees the pixels, context and anchor grid it sees in the full frame
            step = 32 / f
            x0, y0 = int(np.floor(x0 / step) * step), int(np.floor(y0 / step) * step)
            x1, y1 = min(W, int(np.ceil(np.ceil(x1 / step) * step))), min(H, int(np.ceil(np.ceil(y1 / step) * step)))
            crop = bgr[y0:y1, x0:x1]
            if f < 1.0:
                crop = cv2.resize(crop, (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))),
                                  interpolation=cv2.INTER_LINEAR)
            d = self._run(crop)
            if len(d):
                shift = np.array([x0, y0], np.float32)
                found.append(Detections(d.boxes / f + np.r_[shift, 0, 0], d.scores, d.landmarks / f + shift))
        if not found:
            return Detections.empty()
        dets = Detections(*(np.concatenate([getattr(d, k) for d in found]) for k in ("boxes", "scores", "landmarks")))
        dets = dets.take(nms(dets.boxes, dets.scores, self.nms_iou))
        return finish(dets, image.shape, self.min_size, self.max_faces)


def merge_regions(regions: np.ndarray, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """x, y, w, h regions -> integer x0, y0, x1, y1 rectangles inside the frame, overlapping ones
    merged into their union (a face near another is looked for once)."""
    rects = []
    for x, y, w, h in np.asarray(regions, np.float64).reshape(-1, 4):
        r = [max(0, int(np.floor(x))), max(0, int(np.floor(y))), min(width, int(np.ceil(x + w))),
             min(height, int(np.ceil(y + h)))]
        if r[2] - r[0] >= 8 and r[3] - r[1] >= 8:
            rects.append(r)
    merged = True
    while merged:
        merged = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    rects[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del rects[j]
                    merged = True
                    break
            if merged:
                break
    return [tuple(r) for r in rects]


# every name in config.DETECTOR_SIZES has its class here (tests/test_detectors.py)
REGISTRY: dict[str, type[Detector]] = {c.name: c for c in (YuNetDetector, HaarDetector)}


def make_detector(cfg: DetectorConfig = DetectorConfig(), threads: int = 1) -> Detector:
    """The detector a [detector] table describes (size 0: the detector's default)."""
    kind = REGISTRY.get(cfg.type)
    if kind is None:
        raise DetectorError(f"unknown detector {cfg.type!r} (choose from {', '.join(DETECTORS)})")
    return kind.from_config(cfg, cfg.size or DEFAULT_SIZE[cfg.type], threads)


CROPS_FILE = Path(__file__).resolve().parent / "crops.json"


CROP_FALLBACK_MODEL = "cbilstm"  # the model whose crops a model without its own fit borrows (said in the log)


def calibrated_crop(detector: str, model: str = CROP_FALLBACK_MODEL) -> CropSpec:
    """The crop ``python -m benchmarks.calibrate`` fitted for (``detector``, ``model``) (crops.json). A
    model without its own fit (a user's retrained family member) gets the default model's, with a
    warning: the framing the models were trained on is the same, the fit is not theirs."""
    try:
        table = json.loads(CROPS_FILE.read_text(), object_pairs_hook=unique_keys)
    except (OSError, ValueError) as e:
        raise DetectorError(f"{CROPS_FILE} is unreadable ({e}): reinstall fer-edge") from None
    fits = table.get(detector) if isinstance(table, dict) else None
    if not isinstance(fits, dict) or not fits:
        raise DetectorError(f"no calibrated crop for detector {detector!r} in {CROPS_FILE}")
    entry = fits.get(model)
    if entry is None:
        entry = fits.get(CROP_FALLBACK_MODEL)
        if entry is None:
            raise DetectorError(f"no calibrated crop for detector {detector!r} and model {model!r} in {CROPS_FILE}")
        log.warning("no crop calibrated for %s with model %s: using %s's (python -m benchmarks.calibrate fits one)",
                    detector, model, CROP_FALLBACK_MODEL)
    try:
        return CropSpec.from_dict(entry["crop"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DetectorError(f"{CROPS_FILE}: the crop for {detector!r} is invalid ({e}): reinstall fer-edge") from None


__all__ = ["Detector", "DetectorError", "HaarDetector", "YuNetDetector", "make_detector", "calibrated_crop",
           "decode_yunet", "DETECTORS", "PACKAGED"]
