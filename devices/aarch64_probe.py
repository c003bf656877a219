"""The aarch64 check's step-3 worker (``python devices/aarch64_check.py probe ...``), run on both
arches: the saved faces through every usable edge artifact, and where two arches could part ways
before the model (decoding, the detector's resize, the detector). Imports only numpy, OpenCV and
``edge_runtime``, so it runs inside the arm64 rootfs."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from edge_runtime.manifest import read_manifest


def probe(args) -> int:
    """Preprocess + predict the saved faces with every usable edge artifact; write probs + timings."""
    from edge_runtime.backends import BackendError, available_runtimes, load_backend
    from edge_runtime.preprocess import preprocess_batch

    manifest = read_manifest(args.artifacts)
    faces = np.load(args.faces)
    batch = preprocess_batch(faces, manifest.preprocessing)
    import edge_runtime
    out = {"machine": platform.machine(), "python": platform.python_version(),
           "edge_runtime_from": str(Path(edge_runtime.__file__).parent),
           "runtimes": available_runtimes(), "batch_sha": _sha(batch), "artifacts": {}}
    for name in args.names.split(","):
        try:
            be = load_backend(manifest, name, threads=1)
        except BackendError as e:
            out["artifacts"][name] = {"error": str(e)}
            continue
        probs = be.predict(batch)
        ref = None
        if be.format == "tflite" and be.precision == "int8":  # the same arithmetic on every CPU (docstring)
            from edge_runtime.backends import TFLiteBackend
            from edge_runtime.manifest import artifact_path
            ref = TFLiteBackend(artifact_path(manifest, name), name, manifest.artifacts[name], manifest.labels,
                                reference_kernels=True).predict(batch).tolist()
        one = batch[:1]
        be.predict(one)  # warm-up
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            be.predict(one)
            times.append((time.perf_counter() - t) * 1e3)
        out["artifacts"][name] = {"runtime": be.runtime, "probs": probs.tolist(), "reference_kernel_probs": ref,
                                  "ms_per_face_median": float(np.median(times)),
                                  "ms_per_face_min": float(np.min(times)), "repeat": args.repeat}
    if args.video:
        out["video"] = probe_video(args.video, args.frames, args.out + ".frame0.npy")
    Path(args.out).write_text(json.dumps(out))
    return 0


def probe_video(video: str, frames: int, save_frame: str | None = None) -> dict:
    """Where would two arches part ways before the model: decoding, the detector's resize, the detector?"""
    import cv2
    from edge_runtime.config import DetectorConfig
    from edge_runtime.detectors import DEFAULT_SIZE, downscale, make_detector
    from edge_runtime.preprocess import to_gray
    d = DetectorConfig()  # the daemon's default detector
    size = d.size or DEFAULT_SIZE[d.type]
    det = make_detector(d)
    cap = cv2.VideoCapture(video)
    out = {"frame_sha": [], "small_sha": [], "boxes": [], "boxes_full_res": []}
    for _ in range(frames):
        ok, img = cap.read()
        if not ok:
            break
        gray = to_gray(img)
        small = downscale(img, size)[0]
        if not out["frame_sha"] and save_frame:
            np.save(save_frame, gray)
        out["frame_sha"].append(_sha(gray))
        out["small_sha"].append(_sha(small))
        out["boxes"].append(det.detect(img).boxes.round(1).tolist())
    cap.release()
    if out["frame_sha"]:
        det.size = max(img.shape[:2])
        out["boxes_full_res"] = det.detect(img).boxes.round(1).tolist()
    return out


def _sha(a: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
