"""Fit the crop a detector's boxes need to match the framing the classifier was trained on.

    python -m benchmarks.calibrate --artifacts artifacts/cbilstm --detector yunet [--write FILE | --packaged]

Validation faces (the split ``python -m train`` carves from train/; never test/) are composited at
64-200 px onto random backdrops, the detector runs on every frame, and for each found face we know
its true FER framing. Step 1 takes the median geometry (true side / box side, centre offsets);
step 2 searches scale, dy and eye levelling around it by the classifier's accuracy on those faces.
``--packaged`` stores the winner in ``edge_runtime/crops.json`` under (detector, model), which the daemon reads
(``crop.mode = "calibrated"``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from edge_runtime.backends import BackendError, load_backend, select_artifact
from edge_runtime.cli import command
from edge_runtime.config import DetectorConfig, max_threads
from edge_runtime.detectors import CROPS_FILE, DEFAULT_SIZE, DETECTORS, DetectorError, make_detector
from edge_runtime.geometry import CropSpec, Detections, crop_faces, cut_square
from edge_runtime.labels import LABELS
from edge_runtime.manifest import ManifestError, atomic_write_text, read_manifest
from edge_runtime.outputs import add_overwrite_flag, claim_file, model_files, record_file
from edge_runtime.paths import SOURCE_ROOT, cache_dir
from edge_runtime.preprocess import preprocess_batch, to_gray
from edge_runtime.synthetic import shuffled_scene, write_scene

from train.data import DataError

from .pipeline import iter_frames, match

WRITER = "python -m benchmarks.calibrate"



def validation_faces(data_root: str | None, n: int, seed: int) -> tuple[list[tuple[Path, str]], dict]:
    """n faces of the validation split ``python -m train`` carves by default, and its identity."""
    from train.data import load_dataset, skipped_note
    ds = load_dataset(data_root, progress=False)
    if note := skipped_note(train=ds.train):
        print(f"warning: {note}", file=sys.stderr)
    idx = np.random.default_rng(seed).choice(len(ds.val), size=min(n, len(ds.val)), replace=False)
    faces = [(ds.root / ds.val.files[i], LABELS[int(ds.val.labels[i])]) for i in idx]
    return faces, {"root": str(ds.root), "split": "validation (train/ carve)", "val_fraction": ds.val_fraction,
                   "seed": ds.seed, "files_hash": ds.val.files_hash(), "faces": len(faces)}


def found_faces(video: Path, truth: dict, detector) -> tuple[list[np.ndarray], Detections, list[dict]]:
    """Run the detector on every frame; -> (a grey window around each found face, its detection and
    its true box, both in window coordinates). Windows span 3 box sides: every crop tried fits."""
    windows, picked, truths = [], [], []
    for frame, faces in tqdm(zip(iter_frames(video), truth["per_frame"]), total=truth["frames"],
                             desc="detect", unit="frame", disable=None):
        dets = detector.detect(frame)
        gray = to_gray(frame)
        for ti, di in match(faces, dets.boxes).items():
            x, y, w, h = dets.boxes[di]
            half = 1.5 * float(np.sqrt(w * h))
            x0, y0 = int(max(0, x + w / 2 - half)), int(max(0, y + h / 2 - half))
            windows.append(gray[y0:int(y + h / 2 + half) + 1, x0:int(x + w / 2 + half) + 1].copy())
            one = dets.take([di])
            picked.append(Detections(one.boxes - [x0, y0, 0, 0], one.scores, one.landmarks - [x0, y0]))
            tx, ty, ts, _ = faces[ti]["box"]
            truths.append({**faces[ti], "box": [tx - x0, ty - y0, ts, ts]})
    if not picked:
        return [], Detections.empty(), []
    return windows, Detections(*(np.concatenate([getattr(d, f) for d in picked]).astype(np.float32) for f in
                                 ("boxes", "scores", "landmarks"))), truths


def geometric_fit(dets: Detections, truths: list[dict]) -> CropSpec:
    """Median of true side / box side and of the true centre's offset in box sides."""
    b = dets.boxes.astype(np.float64)
    side = np.sqrt(b[:, 2] * b[:, 3])
    t = np.array([f["box"] for f in truths], np.float64)
    scale = np.median(t[:, 2] / side)
    dx = np.median((t[:, 0] + t[:, 2] / 2 - b[:, 0] - b[:, 2] / 2) / side)
    dy = np.median((t[:, 1] + t[:, 3] / 2 - b[:, 1] - b[:, 3] / 2) / side)
    return CropSpec(round(float(scale), 3), round(float(dx), 3), round(float(dy), 3))


def accuracy(grays, dets: Detections, labels: np.ndarray, spec: CropSpec, backend, pre) -> float:
    patches = [crop_faces(g, dets.take([i]), spec)[0][0] for i, g in enumerate(grays)]
    probs = np.concatenate([backend.predict(preprocess_batch(patches[i:i + 256], pre))
                            for i in range(0, len(patches), 256)])
    return float((probs.argmax(1) == labels).mean())


def exact_accuracy(grays, truths, labels, backend, pre) -> float:
    patches = [cut_square(g, x + s / 2, y + s / 2, s) for g, (x, y, s, _) in zip(grays, (f["box"] for f in truths))]
    probs = np.concatenate([backend.predict(preprocess_batch(patches[i:i + 256], pre))
                            for i in range(0, len(patches), 256)])
    return float((probs.argmax(1) == labels).mean())


def search(grays, dets, labels, start: CropSpec, backend, pre, levels) -> list[tuple[float, CropSpec]]:
    """Accuracy of every crop on a small grid around the geometric fit, best first."""
    grid = list(itertools.product((0.9, 0.95, 1.0, 1.05, 1.1), (-0.04, -0.02, 0.0, 0.02, 0.04), levels))
    out = []
    for s, ddy, lev in tqdm(grid, desc="crop grid", unit="crop", disable=None):
        spec = CropSpec(round(start.scale * s, 3), start.dx, round(start.dy + ddy, 3), lev)
        out.append((accuracy(grays, dets, labels, spec, backend, pre), spec))
    # ties go to the crop nearest the geometric fit
    return sorted(out, key=lambda r: (-r[0], abs(r[1].scale / start.scale - 1) + abs(r[1].dy - start.dy)))


@command("python -m benchmarks.calibrate", bad_input=(ManifestError, BackendError, DetectorError, DataError, OSError,
                                                      ValueError))  # OutputError is a ValueError
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibrate", description=__doc__.split("\n")[0],
                                epilog="examples:\n  python -m benchmarks.calibrate --artifacts artifacts/cbilstm "
                                       "--detector yunet --write\n\n"
                                       "exit codes: 0 done; 2 bad arguments or data (one line on stderr)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", metavar="DIR", default="artifacts/cbilstm",
                   help="folder with manifest.json from python -m export (default artifacts/cbilstm)")
    p.add_argument("--detector", default="yunet", choices=DETECTORS)
    p.add_argument("--model", default="", help="detector model (yunet: default the packaged one)")
    p.add_argument("--size", type=int, default=0, help="detector input size, px (default: the daemon's)")
    p.add_argument("--data", metavar="DIR", help="FER2013 root (default: the manifest's, else ../shared/data/fer2013)")
    p.add_argument("--faces", type=int, default=3000, help="validation faces to composite (20..5000)")
    p.add_argument("--seed", type=int, default=0)
    w = p.add_mutually_exclusive_group()
    w.add_argument("--write", metavar="FILE", help="store the fit in this crops table (created, or updated if an "
                                                   "earlier --write made it)")
    w.add_argument("--packaged", action="store_true",
                   help=f"store the fit in the crops table the package ships and the daemon reads "
                        f"({CROPS_FILE.relative_to(SOURCE_ROOT)}): a deliberate replacement")
    add_overwrite_flag(p)
    a = p.parse_args(argv)
    logging.getLogger("edge_runtime").setLevel(logging.WARNING)
    if not 20 <= a.faces <= 5000 or not (a.size == 0 or 64 <= a.size <= 4096):
        raise ValueError("--faces must be in [20, 5000] and --size 0 or in [64, 4096]")
    from train.data import data_root_or_none
    out = CROPS_FILE if a.packaged else Path(a.write) if a.write else None
    if a.write:
        claim_file(a.write, writer=WRITER, inputs=model_files(a.artifacts), data=[data_root_or_none(a.data)],
                   flag="--write", overwrite=a.overwrite)
    fit, ranked = fit_crop(a, *_setup(a))
    f = fit["fit"]
    print(f"{a.detector}: found {f['found']}/{f['data']['faces']} validation faces; accuracy exact crop "
          f"{f['exact_crop_accuracy']:.2%}, geometric fit {CropSpec.from_dict(f['geometric'])} "
          f"{f['geometric_accuracy']:.2%}, best {ranked[0][1]} {ranked[0][0]:.2%}")
    for acc, spec in ranked[:5]:
        print(f"  {acc:.2%}  {spec}")
    if out is not None:
        table = json.loads((out if out.is_file() else CROPS_FILE).read_text())
        table.setdefault(a.detector, {})[read_manifest(a.artifacts).model] = fit  # keyed (detector, model)
        atomic_write_text(out, json.dumps(table, indent=1) + "\n")
        record_file(out, WRITER)
        print(f"wrote {out}")
    return 0


def _setup(a):
    """-> (classifier name, backend, preprocessing, detector, detector size, faces, split facts)."""
    threads = min(2, max_threads())
    manifest = read_manifest(a.artifacts)
    name = select_artifact(manifest, "auto")
    backend = load_backend(manifest, name, threads=threads)
    size = a.size or DEFAULT_SIZE[a.detector]
    detector = make_detector(DetectorConfig.from_dict({"type": a.detector, "size": size,
                                                       "yunet": {"model": a.model or ""}}, "--detector"), threads)
    faces, split = validation_faces(a.data or (manifest.data or {}).get("root"), a.faces, a.seed)
    return name, backend, manifest.preprocessing, detector, size, faces, split


def fit_crop(a, name, backend, pre, detector, size, faces, split):
    """Composite the faces, detect them, fit the crop; -> (crops.json entry, ranked crops). Too few faces
    found to fit on: ValueError."""
    cache = cache_dir("calibrate")
    video = cache / f"val-{split['files_hash'][:12]}-{a.faces}-{a.seed}.avi"
    if not video.is_file():
        write_scene(video, shuffled_scene(faces, seed=a.seed))
    truth = json.loads(video.with_suffix(".json").read_text())
    grays, dets, truths = found_faces(video, truth, detector)
    if len(dets) < 20:
        raise ValueError(f"the detector found only {len(dets)} faces")
    labels = np.array([LABELS.index(f["label"]) for f in truths])
    start = geometric_fit(dets, truths)
    levels = (False, True) if dets.has_landmarks().all() else (False,)
    ranked = search(grays, dets, labels, start, backend, pre, levels)
    best_acc, best = ranked[0]
    return {"crop": best.to_dict(), "fit": {
        "val_accuracy": round(best_acc, 4), "geometric": start.to_dict(),
        "geometric_accuracy": round(accuracy(grays, dets, labels, start, backend, pre), 4),
        "exact_crop_accuracy": round(exact_accuracy(grays, truths, labels, backend, pre), 4),
        "found": len(dets), "recall": round(len(dets) / len(faces), 4), "detector_size": size,
        "detector_model": getattr(detector, "model", "cascade"), "classifier": name,
        "classifier_sha256": backend.sha256, "data": split,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}}, ranked


if __name__ == "__main__":
    raise SystemExit(main())
