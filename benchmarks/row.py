"""One benchmark row, run in its own process: python -m benchmarks.row --manifest DIR --artifact NAME.

A process per row isolates crashes (a converter bug that segfaults the runtime becomes a failed
row, not a dead benchmark) and makes peak RSS a per-artifact figure. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.manifest import Status, artifact_path, read_manifest, verify_file
from edge_runtime.cli import command, emit_result
from edge_runtime.preprocess import scale_pixels

from .accuracy import evaluate
from .latency import per_face_latency, throughput


def _keras_predictor(path: Path, threads: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import keras

    from train.threads import tf_threads
    tf_threads(threads)
    model = keras.models.load_model(path)

    def predict(x):
        return np.asarray(model(x, training=False))

    return predict, f"keras {keras.__version__} / tensorflow {tf.__version__}"


def measure(manifest_dir: str, artifact: str, threads: int, data: str | None, test_dir: str | None,
            quick: bool = False, split_from: str | None = None) -> dict:
    from edge_runtime.backends import load_backend
    from train.data import load_test_split, test_subset

    m = read_manifest(manifest_dir)
    entry = m.artifacts[artifact]
    path = artifact_path(m, artifact)
    row = {"artifact": artifact, "model": m.model, "format": entry.format, "precision": entry.precision,
           "threads": threads, "status": entry.status, "size_kb": path.stat().st_size / 1024 if path.exists() else None}
    t0 = time.perf_counter()
    if entry.format == "keras":
        verify_file(path, entry.sha256, entry.size)  # the reference is checked like every artifact
        predict, runtime = _keras_predictor(path, threads)
    else:
        backend = load_backend(m, artifact, threads=threads)
        predict, runtime = backend.predict, backend.runtime
    row["load_ms"] = (time.perf_counter() - t0) * 1e3
    if entry.format in ("tflite", "onnx"):  # counted from the graph: the cost that does not depend on the CPU
        from .macs import count
        row["macs"] = count(path)["macs"]
    row["runtime"] = runtime
    spec = m.preprocessing
    # a peer is scored on the split our export recorded, so both rows see the same faces
    recorded = (read_manifest(split_from) if split_from else m).data or {}
    split, split_name = load_test_split(test_dir or data or recorded.get("root"), spec)
    if not test_dir and recorded.get("fraction", 1.0) < 1.0:  # the subset export scored on
        split = test_subset(split, recorded["fraction"], recorded.get("seed", 1337))
    x = scale_pixels(split.images, spec)
    row["split"] = {"name": split_name, "n": len(split), "files_hash": split.files_hash(),
                    "skipped": len(split.skipped)}
    if not test_dir and recorded.get("test_files_hash"):
        row["split"]["same_as_export"] = split.files_hash() == recorded["test_files_hash"]
    # Keras (float) is batch-independent: score it in big batches; edge backends per face (SCORING_BATCH)
    row.update(evaluate(predict, x, split.labels, **({"batch": 256} if entry.format == "keras" else {})))
    kw = {"min_iters": 60, "min_seconds": 0.2, "rounds": 3} if quick else {}
    row["latency"] = per_face_latency(predict, x[:64], **kw)
    row["throughput"] = throughput(predict, x[:64], **({"min_seconds": 0.2} if quick else {}))
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


@command("python -m benchmarks.row", bad_input=(), tf_log="3")  # every failure is a row
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.row", description=__doc__)
    p.add_argument("--manifest", required=True)
    p.add_argument("--artifact", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data")
    p.add_argument("--test-dir")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--split-from", help="manifest whose recorded test split to use (for peers)")
    a = p.parse_args(argv)
    try:
        row = measure(a.manifest, a.artifact, a.threads, a.data, a.test_dir, a.quick, a.split_from)
    except Exception as e:  # any failure is a row, not a crash of the whole benchmark
        row = {"artifact": a.artifact, "threads": a.threads, "status": Status.FAILED,
               "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    emit_result(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
