"""End-to-end daemon throughput per backend: the very Daemon that `python -m edge_runtime` runs,
fed a video file read in full (no frame dropping), with the per-stage latency split."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from edge_runtime import config
from edge_runtime.daemon import Daemon
from edge_runtime.manifest import read_manifest
from edge_runtime.synthetic import make_video

REPO = Path(__file__).resolve().parents[1]


def default_video(data_root: str | None, frames: int) -> Path:
    """A 640x480 one-face video composited from the test split (generated once, cached)."""
    path = REPO / ".cache" / "bench" / f"one-face-640x480-{frames}.avi"
    if not path.is_file():
        from train.data import resolve_root
        make_video(path, resolve_root(data_root), n_faces=1, frames=frames, size=(640, 480), face=120)
    return path


def run_pipeline(art_dir, video: str | None, threads: list[int], quick: bool = False,
                 data_root: str | None = None, only: list[str] | None = None) -> list[dict]:
    manifest = read_manifest(art_dir)
    root = data_root or (manifest.get("data") or {}).get("root")
    video = Path(video) if video else default_video(root, 60 if quick else 300)
    names = [n for n, e in manifest["artifacts"].items()
             if e.get("format") in ("tflite", "onnx") and (not only or n in only)]
    logging.getLogger("edge_runtime").setLevel(logging.WARNING)
    rows = []
    for name in names:
        for t in threads:
            row = {"artifact": name, "threads": t, "video": str(video)}
            try:
                cfg = config.build(flags={"model": {"artifacts": str(art_dir), "backend": name, "threads": t},
                                          "source": {"uri": str(video)}, "events": {"path": os.devnull}})
                daemon = Daemon(cfg)
                t0 = time.perf_counter()
                daemon.run()
                secs = time.perf_counter() - t0
                snap = daemon.stats.snapshot()
                row.update({"status": "ok", "frames": snap["frames_processed"], "seconds": round(secs, 3),
                            "fps": snap["frames_processed"] / secs, "faces": snap["faces"],
                            "dropped": snap["frames_dropped"], "stages_ms": snap["latency_ms_mean"],
                            "runtime": snap.get("runtime")})
            except Exception as e:  # a backend that cannot run is a row, not a crash
                row.update({"status": "failed", "reason": f"{type(e).__name__}: {e}"[:300]})
            rows.append(row)
    return rows
