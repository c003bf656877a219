"""End-to-end pipeline benchmark: the very Daemon that ``python -m edge_runtime`` runs, on videos
composited from the split being scored, one row per detector.

Two scenes (``edge_runtime.synthetic``), 640x480, faces 64-200 px on random backdrops:
- ``one-face``: a new face, size, place and backdrop every frame (no temporal help);
- ``moving``: 2-4 faces drifting, crossing, entering and leaving (tracking: ID switches, merges).

Per row: recall (a face is found when a box overlaps it with IoU >= 0.3), per-frame label accuracy
of the found faces (raw and smoothed), the same faces' accuracy on their exact crops (the ceiling
a detector and crop can reach), frames/s and the per-stage split. A ``fer`` row runs the fer
package's own pipeline on the same video in its own process.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge_runtime import config
from edge_runtime.cli import results
from edge_runtime.backends import select_artifact
from edge_runtime.daemon import Daemon
from edge_runtime.geometry import clip_boxes, cut_square, iou_matrix
from edge_runtime.labels import LABELS
from edge_runtime.manifest import Status, read_manifest
from edge_runtime.paths import SOURCE_ROOT, cache_dir, shared_dir
from edge_runtime.preprocess import preprocess_batch
from edge_runtime.synthetic import moving_scene, shuffled_scene, small_scene, write_scene

MATCH_IOU = 0.3
SHARED_YUNET = shared_dir("models", "yunet")
# detector rows: name -> config [detector] layer (yunet-s is converted from ../shared on first use)
DETECTOR_ROWS = {"yunet-n": {"type": "yunet"}, "yunet-n-every-frame": {"type": "yunet", "full_every": 1},
                 "yunet-s": {"type": "yunet", "yunet": {"model": "@yunet_s"}}, "haar": {"type": "haar"}}
SCENES = ("one-face", "moving", "small-faces")  # small-faces: one face at a time, a second each, plain background
SCENE_VERSION = 2  # bump when edge_runtime.synthetic draws scenes differently (the video cache key)


def split_faces(root: Path, split_dir: Path, n: int, seed: int) -> list[tuple[Path, str]]:
    """n faces drawn without replacement from a <split>/<emotion>/ folder (its own class mix)."""
    from train.data import list_class_folders
    items = list_class_folders(split_dir)
    idx = np.random.default_rng(seed).choice(len(items), size=min(n, len(items)), replace=False)
    return [(split_dir.parent / items[i][0], LABELS[items[i][1]]) for i in idx]


def scene_video(scene: str, faces: list[tuple[Path, str]], frames: int, seed: int, cache: Path) -> Path:
    """Write (once, cached by content) the scene's video and truth; -> the video path."""
    key = hashlib.sha256(json.dumps([SCENE_VERSION, scene, frames, seed, [str(f) for f, _ in faces]]).encode()
                         ).hexdigest()[:12]
    path = cache / f"{scene}-640x480-{frames}-{key}.avi"
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        gen = (shuffled_scene(faces[:frames], seed=seed) if scene == "one-face"
               else small_scene(faces, frames, seed=seed) if scene == "small-faces"
               else moving_scene(faces, frames, seed=seed))
        write_scene(path, gen)
    return path


def yunet_s_model(cache: Path) -> Path:
    """The shared YuNet-s converted to any input size (export.yunet), cached."""
    out = cache / "yunet_s.onnx"
    if not out.is_file():
        from export.yunet import dynamic_size
        dynamic_size(str(SHARED_YUNET / "yunet_s_320_320.onnx"), str(out))
    return out


def iter_frames(video: Path):
    """The video's frames, decoded one at a time."""
    cap = cv2.VideoCapture(str(video))
    try:
        while True:
            ok, f = cap.read()
            if not ok:
                return
            yield f
    finally:
        cap.release()


def exact_crop_labels(frames, truth: dict, backend, spec) -> list[list[str]]:
    """Each true face cut at its true square (edges replicated past the frame, as the daemon's crops
    are) and classified: what a perfect detector and crop would get."""
    out = []
    for frame, faces in zip(frames, truth["per_frame"]):
        crops = [cut_square(frame, x + s / 2, y + s / 2, s) for x, y, s, _ in (f["box"] for f in faces)]
        probs = backend.predict(preprocess_batch(crops, spec)) if crops else np.zeros((0, len(LABELS)))
        out.append([LABELS[int(np.argmax(p))] for p in probs])
    return out


def match(truth_faces: list[dict], boxes: np.ndarray, frame_size=None) -> dict[int, int]:
    """Greedy one-to-one IoU matching: truth index -> detection index. With ``frame_size`` (w, h)
    true boxes are clipped to the frame first: a face half out of view is matched by its visible half."""
    truth = np.array([f["box"] for f in truth_faces], np.float64).reshape(-1, 4)
    if frame_size is not None:
        truth = clip_boxes(truth, (frame_size[1], frame_size[0]))
    m = iou_matrix(truth, boxes)
    pairs, used_t, used_d = {}, set(), set()
    for flat in np.argsort(-m, axis=None, kind="stable"):
        ti, di = np.unravel_index(flat, m.shape)
        if m[ti, di] < MATCH_IOU:
            break
        if ti not in used_t and di not in used_d:
            pairs[int(ti)] = int(di)
            used_t.add(ti)
            used_d.add(di)
    return pairs


def cluster_se(values, clusters) -> float | None:
    """Standard error of the mean of ``values`` when the values of one cluster are correlated: the
    cluster-robust (sandwich) estimator, sqrt(G / (G - 1) * sum_c (sum_{i in c} (v_i - mean))^2) / n,
    G clusters. Equal to the plain SE's order when every cluster has one value; None below 2 clusters."""
    v = np.asarray(values, np.float64)
    ids = {c: k for k, c in enumerate(dict.fromkeys(clusters))}
    g = len(ids)
    if g < 2:
        return None
    sums = np.zeros(g)
    np.add.at(sums, [ids[c] for c in clusters], v - v.mean())
    return float(np.sqrt(g / (g - 1) * np.sum(sums ** 2)) / len(v))


def per_cluster_mean(values, clusters) -> float | None:
    """The mean over clusters of each cluster's mean (each distinct face counts once)."""
    if not values:
        return None
    ids = {c: k for k, c in enumerate(dict.fromkeys(clusters))}
    sums, counts = np.zeros(len(ids)), np.zeros(len(ids))
    np.add.at(sums, [ids[c] for c in clusters], np.asarray(values, np.float64))
    np.add.at(counts, [ids[c] for c in clusters], 1)
    return float(np.mean(sums / counts))


def score(truth: dict, frame_dets: list[list[dict]], ceiling: list[list[str]], min_visible: float = 0.5) -> dict:
    """Recall over faces at least ``min_visible`` in view; label accuracy (raw, smoothed and the
    exact-crop ceiling) over the found faces fully in view (a face cut by the frame edge or another
    face has no exact crop to compare with); false positives, ID switches and merged tracks (a
    track that carried two faces). ``frame_dets[i]`` = frame i's detections, each a dict with box,
    label (smoothed), raw_label and track."""
    faces = found = judged = raw_ok = smooth_ok = ceil_ok = false_pos = 0
    paired: list[int] = []  # per judged face: exact crop right - detector crop right (-1, 0, 1)
    cluster: list = []  # per judged face: which distinct face it is (its frames are not independent)
    raw_hits: list[int] = []
    ceil_hits: list[int] = []
    last_track: dict[int, int] = {}
    track_ids: dict[int, set] = {}
    switches = 0
    for i, dets in enumerate(frame_dets):
        tfaces = truth["per_frame"][i] if i < len(truth["per_frame"]) else []
        boxes = np.array([d["box"] for d in dets], np.float64).reshape(-1, 4)
        pairs = match(tfaces, boxes, truth.get("size"))
        false_pos += len(dets) - len(pairs)
        for ti, f in enumerate(tfaces):
            if f.get("visible", 1.0) < min_visible:
                continue
            faces += 1
            if ti not in pairs:
                continue
            d = dets[pairs[ti]]
            found += 1
            if f.get("visible", 1.0) >= 1.0:
                judged += 1
                raw_ok += d["raw_label"] == f["label"]
                smooth_ok += d["label"] == f["label"]
                ceil_ok += ceiling[i][ti] == f["label"]
                paired.append(int(ceiling[i][ti] == f["label"]) - int(d["raw_label"] == f["label"]))
                cluster.append(f.get("id", (i, ti)))  # a face without an id is seen in one frame only
                raw_hits.append(int(d["raw_label"] == f["label"]))
                ceil_hits.append(int(ceiling[i][ti] == f["label"]))
            if "track" in d:
                fid = f.get("id", ti)
                if fid in last_track and last_track[fid] != d["track"]:
                    switches += 1
                last_track[fid] = d["track"]
                track_ids.setdefault(d["track"], set()).add(fid)
    per = (lambda k: k / judged if judged else 0.0)  # noqa: E731
    return {"faces": faces, "found": found, "recall": found / faces if faces else 0.0, "judged": judged,
            "label_acc": per(raw_ok), "smoothed_acc": per(smooth_ok), "ceiling_acc": per(ceil_ok),
            # the ceiling minus the label accuracy on the same faces, and its standard error (a paired difference)
            "gap_pp": 100 * float(np.mean(paired)) if paired else None,
            "gap_se_pp": 100 * float(np.std(paired, ddof=1) / np.sqrt(len(paired))) if len(paired) > 1 else None,
            # the same with each distinct face's frames as one cluster (they are not independent samples)
            "gap_cluster_se_pp": 100 * se if (se := cluster_se(paired, cluster)) is not None else None,
            "distinct_faces": len(set(cluster)),
            # accuracy per distinct face: each face's share of frames right, averaged over faces
            "label_acc_per_face": per_cluster_mean(raw_hits, cluster),
            "ceiling_acc_per_face": per_cluster_mean(ceil_hits, cluster),
            "false_pos": false_pos, "id_switches": switches,
            "merged_tracks": sum(len(v) > 1 for v in track_ids.values())}


def daemon_row(art_dir: Path, artifact: str, threads: int, detector: dict, video: Path, events: Path,
               extra: dict | None = None) -> tuple[dict, list[list[dict]], Daemon]:
    """Run the daemon over the whole video (``extra``: more config sections); -> (timing row,
    per-frame detections, the daemon)."""
    flags = {"model": {"artifacts": str(art_dir), "backend": artifact, "threads": threads},
             "source": {"uri": str(video)}, "events": {"path": str(events)}, "detector": detector, **(extra or {})}
    events.unlink(missing_ok=True)  # the daemon appends to its events file
    daemon = Daemon(config.build(flags=flags))
    t0 = time.perf_counter()
    daemon.run()
    secs = time.perf_counter() - t0
    snap = daemon.stats.snapshot()
    n = snap["frames_processed"]
    per_frame: list[list[dict]] = [[] for _ in range(n)]
    for line in events.read_text().splitlines():
        e = json.loads(line)
        if e["type"] in ("new", "update") and 0 <= e["frame"] < n:
            per_frame[e["frame"]].append(e)
    row = {"frames": n, "seconds": round(secs, 3), "fps": n / secs, "dropped": snap["frames_dropped"],
           "stages_ms": snap["latency_ms_mean"], "runtime": snap.get("runtime"),
           "detector_runtime": getattr(daemon.recognizer.detector, "runtime", "opencv"),
           "crop": daemon.recognizer.crop.to_dict()}
    return row, per_frame, daemon


def fer_row(video: Path, truth: dict) -> dict:
    """The fer package's own pipeline (Haar + its mini-Xception, TensorFlow, 1 thread) in its own process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fer_pipeline", str(video)], capture_output=True,
                          text=True, env=env, cwd=SOURCE_ROOT, timeout=3600)
    out = list(results(proc.stdout))
    if proc.returncode != 0 or not out:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"detector": "fer (haar)", "artifact": "peer-fer", "status": Status.FAILED, "reason": tail[:300]}
    res = out[0]
    ceiling = [[""] * len(t) for t in truth["per_frame"]]  # the peer's own ceiling is not ours to claim
    row = {"detector": "fer (haar)", "artifact": "peer-fer", "threads": 1, "status": "ok",
           "frames": res["frames"], "seconds": res["seconds"], "fps": res["frames"] / res["seconds"],
           "runtime": res["runtime"], "stages_ms": {}}
    row.update(score(truth, res["per_frame"], ceiling))
    for key in ("ceiling_acc", "gap_pp", "gap_se_pp", "gap_cluster_se_pp", "ceiling_acc_per_face"):  # no ceiling
        row.pop(key)
    return row


def run_pipeline(art_dir, video: str | None, threads: list[int], quick: bool = False,
                 data_root: str | None = None, only: list[str] | None = None,
                 detectors: list[str] | None = None, peers: list[str] = (), frames: int | None = None,
                 seed: int = 0) -> list[dict]:
    """-> one row per (scene, detector, artifact, threads), plus the peers' pipeline rows."""
    manifest = read_manifest(art_dir)
    cache = cache_dir("bench")
    cache.mkdir(parents=True, exist_ok=True)
    logging.getLogger("edge_runtime").setLevel(logging.WARNING)
    names = [n for n, e in manifest.artifacts.items() if e.format in ("tflite", "onnx") and (not only or n in only)]
    if not only:  # the device's own choice, not every backend
        names = [select_artifact(manifest, "auto")]
    videos = {"user": Path(video)} if video else {}
    if not video:
        from train.data import find_layout, resolve_root
        root = resolve_root(data_root or (manifest.data or {}).get("root"))
        _, _, eval_dir, _ = find_layout(root)
        n = frames or (60 if quick else 2000)
        faces = split_faces(root, eval_dir, 2 * n, seed)
        videos = {s: scene_video(s, faces, n, seed, cache) for s in SCENES}
    rows = []
    for scene, path in videos.items():
        truth_path = path.with_suffix(".json")
        truth = json.loads(truth_path.read_text()) if truth_path.is_file() else None
        ceilings: dict[str, list] = {}  # per artifact: the model on the true squares, any detector
        for det_name in detectors or list(DETECTOR_ROWS):
            det = copy.deepcopy(DETECTOR_ROWS[det_name])
            for name in names:
                for t in threads:
                    row = {"scene": scene, "detector": det_name, "artifact": name, "threads": t, "video": str(path)}
                    try:
                        if det.get("yunet", {}).get("model") == "@yunet_s":
                            det["yunet"]["model"] = str(yunet_s_model(cache))
                        timing, per_frame, daemon = daemon_row(Path(art_dir), name, t, det, path,
                                                               cache / f"events-{os.getpid()}.jsonl")
                        row.update(status="ok", **timing)
                        if truth and truth.get("per_frame"):
                            if name not in ceilings:
                                er = daemon.recognizer
                                ceilings[name] = exact_crop_labels(iter_frames(path), truth, er.backend, er.spec)
                            row.update(score(truth, per_frame, ceilings[name]))
                    except Exception as e:  # a backend or detector that cannot run is a row, not a crash
                        row.update({"status": Status.FAILED, "reason": f"{type(e).__name__}: {e}"[:300]})
                    rows.append(row)
        if truth and truth.get("per_frame") and "fer" in peers:
            rows.append({"scene": scene, **fer_row(path, truth)})
    return rows
