"""Choose detection between full frames: ``[detector] full_every`` and ``roi_margin``, on validation videos.

    python -m benchmarks.regions --artifacts edge_runtime/models/cbilstm --frames 600

Two scenes of validation faces (the split ``python -m train`` carves from train/; never test/): 2-4
faces moving across a backdrop, and one face at a time, a second each, on a plain background. For
each (full_every, roi_margin) the very daemon runs them, 1 thread; recall and label accuracy are
compared with full-frame detection on every frame (full_every = 1). The rule: the setting with the
lowest detector time whose recall and label accuracy stay within one standard error (per distinct
face, its frames as one cluster) of every-frame detection in both scenes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

import numpy as np

from edge_runtime.cli import command
from edge_runtime.cpu import cpu_class
from edge_runtime.manifest import ManifestError, read_manifest
from edge_runtime.outputs import add_overwrite_flag, claim_file, record_file
from edge_runtime.synthetic import moving_scene, small_scene, write_scene

from train.data import DataError

from .calibrate import validation_faces
from edge_runtime.packaged import packaged_dir
from edge_runtime.paths import cache_dir

from .pipeline import cluster_se, daemon_row, exact_crop_labels, iter_frames, score

WRITER = "python -m benchmarks.regions"


def clustered_se(truth: dict, per_frame: list[list[dict]], what: str) -> float:
    """Standard error of recall (``what`` = "recall": faces at least half in view) or of label accuracy
    ("label": found faces fully in view), each distinct face's frames as one cluster."""
    from .pipeline import match
    hits, ids = [], []
    for i, faces in enumerate(truth["per_frame"][:len(per_frame)]):
        boxes = np.array([d["box"] for d in per_frame[i]], np.float64).reshape(-1, 4)
        pairs = match(faces, boxes, truth.get("size"))
        for ti, f in enumerate(faces):
            vis = f.get("visible", 1.0)
            if what == "recall" and vis >= 0.5:
                hits.append(int(ti in pairs))
            elif what == "label" and ti in pairs and vis >= 1.0:
                hits.append(int(per_frame[i][pairs[ti]]["raw_label"] == f["label"]))
            else:
                continue
            ids.append(f.get("id", (i, ti)))
    se = cluster_se(hits, ids)
    return float(se) if se is not None else 0.0


@command(WRITER, bad_input=(ManifestError, DataError, ValueError))  # OutputError is a ValueError
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.regions", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=str(packaged_dir("cbilstm")))
    p.add_argument("--data", help="FER2013 root (default: $FER_DATA, else ../shared/data/fer2013)")
    p.add_argument("--frames", type=int, default=600, help="frames per scene (15 fps)")
    p.add_argument("--every", default="1,2,3,5,8", help="full_every values to try")
    p.add_argument("--margins", default="0.3,0.5,0.8", help="roi_margin values to try")
    p.add_argument("--json", help="also write the rows here")
    add_overwrite_flag(p)
    a = p.parse_args(argv)
    logging.getLogger("edge_runtime").setLevel(logging.WARNING)
    art = Path(a.artifacts)
    manifest = read_manifest(art)
    faces, _ = validation_faces(a.data, max(200, a.frames), seed=7)
    cache = cache_dir("regions")
    cache.mkdir(parents=True, exist_ok=True)
    videos = {}
    for name, gen in (("moving", moving_scene(faces, a.frames, seed=7)), ("small-faces", small_scene(faces, a.frames, seed=7))):
        path = cache / f"{name}-{a.frames}.avi"
        if not path.with_suffix(".json").is_file():
            write_scene(path, gen)
        videos[name] = (path, json.loads(path.with_suffix(".json").read_text()))
    settings = [(1, 0.0)] + [(n, m) for n, m in itertools.product(
        [int(v) for v in a.every.split(",") if int(v) > 1], [float(v) for v in a.margins.split(",")])]
    rows, ceilings = [], {}
    from edge_runtime.backends import select_artifact
    artifact = select_artifact(manifest, "auto")
    for (n, m), (scene, (path, truth)) in itertools.product(settings, videos.items()):
        det = {"type": "yunet", "full_every": n, **({"roi_margin": m} if m else {})}
        timing, per_frame, daemon = daemon_row(art, artifact, 1, det, path, cache / "events.jsonl")
        if scene not in ceilings:
            er = daemon.recognizer
            ceilings[scene] = exact_crop_labels(iter_frames(path), truth, er.backend, er.spec)
        s = score(truth, per_frame, ceilings[scene])
        row = {"scene": scene, "full_every": n, "roi_margin": m, "recall": s["recall"], "recall_se": clustered_se(truth, per_frame, "recall"),
               "label_acc": s["label_acc"], "label_se": clustered_se(truth, per_frame, "label"), "fps": timing["fps"],
               "detect_ms": timing["stages_ms"].get("detect"), "region_frames": daemon.stats.counters["frames_region_detect"],
               "frames": timing["frames"]}
        rows.append(row)
        print(f"{scene:12s} full_every={n} margin={m:.1f}: recall {row['recall']:.3f} ± {row['recall_se']:.3f}, "
              f"label {row['label_acc']:.3f} ± {row['label_se']:.3f}, detect {row['detect_ms']:.2f} ms, "
              f"{row['fps']:.1f} fps", flush=True)
    base = {r["scene"]: r for r in rows if r["full_every"] == 1}

    def keeps(r):
        b = base[r["scene"]]
        return (r["recall"] >= b["recall"] - b["recall_se"]) and (r["label_acc"] >= b["label_acc"] - b["label_se"])
    ok = [(n, m) for n, m in settings if all(keeps(r) for r in rows if (r["full_every"], r["roi_margin"]) == (n, m))]
    cost = {s: sum(r["detect_ms"] for r in rows if (r["full_every"], r["roi_margin"]) == s) for s in ok}
    best = min(cost, key=cost.get)
    print(f"\nchosen (lowest detector time within one standard error of every-frame detection in both scenes): "
          f"full_every = {best[0]}, roi_margin = {best[1]:g}\ntimings on {cpu_class()}, 1 thread")
    if a.json:
        claim_file(a.json, writer=WRITER, flag="--json", overwrite=a.overwrite)
        Path(a.json).write_text(json.dumps({"rows": rows, "chosen": {"full_every": best[0], "roi_margin": best[1]},
                                            "cpu": cpu_class(), "artifacts": str(art)}, indent=1))
        record_file(a.json, WRITER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
