"""The one pixel transform shared by training, export calibration, evaluation and the device.

A face image of any size and channel layout -> float32 (size, size, 1):
grayscale (OpenCV BGR weights) -> resize (INTER_AREA to shrink, INTER_LINEAR to grow)
-> ``x * scale + offset``. The spec travels in every manifest so no consumer guesses.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 48
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    interpolation: str = "area"  # used when shrinking; growing always uses bilinear
    color: str = "gray"

    def __post_init__(self):
        if not isinstance(self.size, numbers.Integral) or isinstance(self.size, bool) or not 8 <= self.size <= 1024:
            raise ValueError(f"input size {self.size!r} must be an integer in [8, 1024]")
        for v in (self.scale, self.offset):
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not abs(v) < 1e6:  # also refuses NaN
                raise ValueError(f"scale and offset must be finite numbers, got {v!r}")
        if not np.float32(self.scale) * 255 > 1e-6:  # 0 (or one float32 rounds to 0) makes every face alike
            raise ValueError(f"scale must be positive (and > 4e-9, to survive float32), got {self.scale!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}")
        if self.color != "gray":
            raise ValueError("only grayscale models are supported")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        return cls(**d)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any of HxW, HxWx1, HxWx3 (BGR), HxWx4 (BGRA) -> HxW uint8. 16-bit images keep their top
    byte; float images in [0, 1] are scaled by 255, other numbers are clipped to [0, 255]."""
    img = np.asarray(image)
    if img.dtype == np.uint16:  # 16-bit PNGs: keep the top byte
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        if img.dtype.kind == "f":
            if not np.isfinite(img).all():
                raise ValueError("image holds NaN or infinite values")
            img = np.round(img * 255.0 if img.size and img.min() >= 0.0 and img.max() <= 1.0 else img)
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    elif img.ndim != 2:
        raise ValueError(f"unsupported image shape {img.shape}")
    return img


def resize_gray(gray: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    h, w = gray.shape
    if (h, w) == (size, size):
        return gray
    shrinking = h >= size and w >= size
    interp = _INTERPOLATIONS[interpolation] if shrinking else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interp)


def to_uint8(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Gray + resized, still uint8: the form the data cache and int8 paths keep."""
    return resize_gray(to_gray(image), spec.size, spec.interpolation)


def scale_pixels(gray_u8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 array of any leading shape -> float32 with a trailing channel axis."""
    x = gray_u8.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
    return x[..., None]


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One face image -> float32 (size, size, 1)."""
    return scale_pixels(to_uint8(image, spec), spec)


def preprocess_batch(images, spec: PreprocessSpec) -> np.ndarray:
    """A list of face images (any sizes) or a uint8 (N, H, W) array -> float32 (N, size, size, 1)."""
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.dtype == np.uint8:
        if images.shape[1:] == (spec.size, spec.size):
            return scale_pixels(images, spec)
    if len(images) == 0:
        return np.zeros((0, spec.size, spec.size, 1), np.float32)
    return scale_pixels(np.stack([to_uint8(im, spec) for im in images]), spec)


def reference_faces(size: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """``n`` fixed ``size`` x ``size`` uint8 images on which export records each model's outputs and the
    device checks them at load (a flipped weight, a wrong runtime or preprocessing shows). Smooth
    random patterns, not faces: no data set image travels in a manifest. Pure numpy, so every
    platform builds the same pixels (numpy's PCG64 is platform-independent)."""
    rng = np.random.default_rng(seed)
    cells = -(-size // 8)
    coarse = rng.uniform(0, 255, (n, cells, cells))
    img = np.kron(coarse, np.ones((8, 8)))[:, :size, :size]
    for _ in range(3):  # box blur: smooth gradients and edges, like a face's
        img = (img + np.roll(img, 1, 1) + np.roll(img, -1, 1) + np.roll(img, 1, 2) + np.roll(img, -1, 2)) / 5
    return np.clip(np.round(img), 0, 255).astype(np.uint8)
