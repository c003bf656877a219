"""The conversion worker: ``python -m export.worker STAGING_DIR [reference] FORMAT...``.

Runs in its own process so TensorFlow stays out of the orchestrator and a converter that
crashes (a segfault in the MLIR quantizer has been seen) costs one format, not the export.
Reads ``STAGING_DIR/job.json``; writes each artifact to ``STAGING_DIR/<name><suffix>`` and
reports one JSON line per event on stdout: start, done, failed, reference.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from edge_runtime.cli import command, emit_result


def one_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    # converter errors carry long stacks of MLIR locations; keep the first sentence-ish part
    return f"{type(e).__name__}: {text}"[:limit]


class Context:
    """What converters need, built lazily: the trained model, its unrolled twin, calibration data."""

    def __init__(self, staging: Path, job: dict):
        self.staging = staging
        self.job = job
        self._model = self._unrolled = None
        self._cache: dict = {}

    @property
    def model_name(self) -> str:
        return self.job["model_name"]

    def model(self):
        if self._model is None:
            import keras
            self._model = keras.models.load_model(self.job["model_file"], compile=False)
        return self._model

    def unrolled_model(self):
        """The same architecture rebuilt with unroll=True, carrying the trained weights."""
        if self._unrolled is None:
            from train.models import build
            m = build(self.job["model_name"], self.job["params"], unroll=True)
            m.set_weights(self.model().get_weights())
            self._unrolled = m
        return self._unrolled

    def _scaled(self, file: str) -> np.ndarray:
        from edge_runtime.preprocess import PreprocessSpec, scale_pixels
        return scale_pixels(np.load(self.staging / file), PreprocessSpec.from_dict(self.job["preprocessing"]))

    def calibration(self) -> np.ndarray:
        return self.cached("calibration", lambda: self._scaled(self.job["calibration_file"]))

    def cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def emit(**event) -> None:
    emit_result(event)


def reference(ctx: Context) -> None:
    t0 = time.perf_counter()
    model = ctx.model()
    probs = model.predict(ctx._scaled(ctx.job["test_file"]), batch_size=256, verbose=0)
    np.save(ctx.staging / "keras_probs.npy", probs.astype(np.float32))
    from edge_runtime.backends import REFERENCE_FACES, REFERENCE_SEED
    from edge_runtime.preprocess import PreprocessSpec, reference_faces, scale_pixels
    spec = PreprocessSpec.from_dict(ctx.job["preprocessing"])  # the faces each artifact's load check uses
    faces = scale_pixels(reference_faces(spec.size, REFERENCE_FACES, REFERENCE_SEED), spec)
    np.save(ctx.staging / "keras_reference_probs.npy", model.predict(faces, verbose=0).astype(np.float32))
    emit(event="reference", file="keras_probs.npy", seconds=time.perf_counter() - t0,
         parameters=int(model.count_params()), input_shape=list(model.input_shape[1:]))


@command("python -m export.worker", bad_input=(), tf_log="3")  # each format's failure is an event
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    staging, names = Path(argv[0]), argv[1:]
    job = json.loads((staging / "job.json").read_text())
    from train.threads import tf_threads
    tf_threads(job.get("threads"))
    from .formats import BY_NAME, REFERENCE, converter
    ctx = Context(staging, job)
    for name in names:
        emit(event="start", name=name)
        if name == REFERENCE:
            reference(ctx)
            continue
        fmt = BY_NAME[name]
        t0 = time.perf_counter()
        try:
            if os.environ.get("FER_EXPORT_FAIL") == name:  # tests: a converter that breaks
                raise RuntimeError(f"forced failure of {name} (FER_EXPORT_FAIL)")
            data = converter(fmt)(ctx)
            (staging / f"{name}{fmt.suffix}").write_bytes(data)  # staging is private; committed atomically later
        except Exception as e:  # one format failing must not stop the others
            traceback.print_exc(file=sys.stderr)
            emit(event="failed", name=name, reason=one_line(e), seconds=time.perf_counter() - t0)
            continue
        emit(event="done", name=name, file=f"{name}{fmt.suffix}", seconds=time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
