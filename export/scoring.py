"""Each artifact as the device will load it: converted by the worker, then loaded through
``edge_runtime.backends.load_backend``, scored on the test split, given its load-check tolerance, and
timed once the converter is done. ``Conversions`` follows the worker's events; ``export.pipeline``
stages, gates and commits what it returns.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.labels import LABELS
from dataclasses import replace

from edge_runtime.manifest import Artifact, Manifest, Tensor, sha256_file
from edge_runtime.preprocess import PreprocessSpec, scale_pixels

from . import formats as F
from . import gate as G

if TYPE_CHECKING:
    from .pipeline import ExportConfig, Worker


class ExportError(Exception):
    """A user-fixable problem (missing model or data): one line, exit code 2."""


def describe_io(path: Path, fmt: str) -> tuple[Tensor, Tensor]:
    if fmt == "tflite":
        from edge_runtime.backends import tflite_interpreter_class
        Interpreter, _ = tflite_interpreter_class()
        it = Interpreter(model_path=str(path))

        def d(x):
            dt = np.dtype(x["dtype"])
            out = {"shape": [int(v) for v in x["shape"]], "dtype": dt.name}
            if dt.kind in "iu":
                out["scale"], out["zero_point"] = float(x["quantization"][0]), int(x["quantization"][1])
            return Tensor.from_dict(out, str(path))
        return d(it.get_input_details()[0]), d(it.get_output_details()[0])
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def d(x):
        return Tensor.from_dict({"shape": [v if isinstance(v, int) else -1 for v in x.shape],
                                 "dtype": {"tensor(float)": "float32"}.get(x.type, x.type)}, str(path))
    return d(sess.get_inputs()[0]), d(sess.get_outputs()[0])


def ms_per_face(backend, x: np.ndarray, runs: int) -> float:
    one = x[:1]
    for _ in range(5):
        backend.predict(one)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.predict(one)
        t.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(t)), 4)


def check_tolerance(precision: str, probs: np.ndarray, keras_probs: np.ndarray) -> float:
    """How far a device's outputs on the reference faces may be from the export's. Float kernels differ
    only in summation order (REFERENCE_ATOL). Optimized int8 kernels round differently per CPU, and each
    CPU's answer sits within about the model's own int8 error of the exact integer one, so two CPUs may
    be twice that apart (cbilstm-lite L5: the Pi 4's kernels 0.047 from x86's, its int8 error 0.054). A
    wrong preprocessing or runtime moves the outputs far more."""
    from edge_runtime.backends import REFERENCE_ATOL
    if precision == "fp32":
        return REFERENCE_ATOL
    return round(min(0.25, max(REFERENCE_ATOL, 2 * float(np.max(np.abs(probs - keras_probs))))), 4)


class Conversions:
    """The Keras reference and every format, converted by the worker and scored here as they finish;
    a format that fails or crashes its converter is a failed row, and the rest go on."""

    def __init__(self, staging: Path, run_dir: Path, run: Manifest, spec: PreprocessSpec, data, cfg: ExportConfig,
                 model_sha: str):
        self.staging, self.run_dir, self.stem, self.cfg, self.log = staging, run_dir, run.model, cfg, cfg.log
        self.x_test, self.y_test = scale_pixels(data.test.images, spec), data.test.labels
        self.source = run
        self.ref: dict = {}
        # the Keras reference row: a copy of the source model, scored by Keras itself
        keras_name = f"{self.stem}_keras.{model_sha[:8]}.keras"
        shutil.copyfile(run_dir / "model.keras", staging / keras_name)
        self.artifacts: dict[str, Artifact] = {F.REFERENCE: Artifact(
            file=keras_name, format="keras", precision="fp32", sha256=model_sha,
            size=(staging / keras_name).stat().st_size, status=G.USABLE,
            notes="the source model; the reference every drop is measured against (no edge backend)")}

    def run(self, worker: Worker, names: list[str]) -> None:
        self.pending, self.current = [F.REFERENCE] + names, None
        while self.pending:  # the worker restarts after a crash with what is left
            for ev in worker.events(self.pending):
                self.on(ev, worker)

    def _finished(self, name: str, entry: Artifact | None = None) -> None:
        if entry is not None:
            self.artifacts[name] = entry
            self.log(_line(name, entry))
        self.pending.remove(name)
        self.current = None

    def on(self, ev: dict, worker: Worker) -> None:
        kind = ev["event"]
        if kind == "start":
            self.current = ev["name"]
            if self.current != F.REFERENCE:
                self.log(f"  converting {self.current} ...")
        elif kind == "reference":
            self._reference(ev)
            self._finished(F.REFERENCE)
        elif kind == "done":
            self._finished(ev["name"], evaluate(F.BY_NAME[ev["name"]], self.staging / ev["file"], ev["seconds"],
                                                 self, self.x_test, self.y_test, self.ref, self.cfg))
        elif kind == "failed":
            self._finished(ev["name"], failed_entry(F.BY_NAME[ev["name"]], ev["reason"], ev["seconds"]))
        elif kind == "exit" and self.current is not None:
            # the worker died inside a converter: that format failed, the rest go on
            reason = _exit_reason(ev["returncode"])
            if self.current == F.REFERENCE:
                raise ExportError(f"cannot run the Keras model {self.run_dir / 'model.keras'}: {reason} "
                                  f"(see {worker.log_path})")
            self._finished(self.current, failed_entry(F.BY_NAME[self.current], reason, None))
        elif kind == "exit" and self.pending:
            raise ExportError(f"conversion worker stopped early ({_exit_reason(ev['returncode'])})")

    def staged(self, name: str, entry: Artifact) -> Manifest:
        """A manifest of one staged artifact, to load it the way the device will."""
        return Manifest(kind="artifacts", model=self.stem, labels=self.source.labels,
                        preprocessing=self.source.preprocessing, dir=str(self.staging), artifacts={name: entry})

    def _reference(self, ev: dict) -> None:
        self.ref["probs"] = np.load(self.staging / ev["file"])
        self.ref["reference_faces_probs"] = np.load(self.staging / "keras_reference_probs.npy")
        s = G.score(self.ref["probs"], self.y_test)
        self.ref.update(s)
        self.artifacts[F.REFERENCE] = replace(
            self.artifacts[F.REFERENCE], input=Tensor((-1, *ev["input_shape"]), "float32"),
            output=Tensor((-1, len(LABELS)), "float32"), accuracy=s["accuracy"], macro_f1=s["macro_f1"],
            agreement=1.0, drop_pp=0.0, parameters=ev["parameters"])
        self.log(f"{'keras':15s} reference  {_size(self.artifacts[F.REFERENCE].size)}  "
                 f"{ev['seconds']:5.1f} s  acc {100 * s['accuracy']:.2f} %  F1 {s['macro_f1']:.3f}")


def evaluate(fmt: F.Format, staged: Path, seconds: float, conv: Conversions,
              x_test: np.ndarray, y_test: np.ndarray, ref: dict, cfg: ExportConfig) -> Artifact:
    from edge_runtime.backends import REFERENCE_FACES, REFERENCE_SEED, SCORING_BATCH, load_backend, reference_probs
    sha = sha256_file(staged)
    final = staged.with_name(f"{conv.stem}_{fmt.tag}.{sha[:8]}{fmt.suffix}")
    os.replace(staged, final)
    entry = Artifact(file=final.name, format=fmt.format, precision=fmt.precision, sha256=sha,
                     size=final.stat().st_size, status=G.USABLE, convert_seconds=round(seconds, 2), notes=fmt.notes)
    try:
        inp, outp = describe_io(final, fmt.format)  # an input or output the manifest cannot state fails this file only
        entry = replace(entry, input=inp, output=outp)
        staged_manifest = conv.staged(fmt.name, entry)
        backend = load_backend(staged_manifest, fmt.name, threads=cfg.threads, probe=False)  # just written here
        check = reference_probs(backend, staged_manifest.preprocessing)
        probs = np.concatenate([backend.predict(x_test[i:i + SCORING_BATCH])
                                for i in range(0, len(x_test), SCORING_BATCH)])
        scores = G.score(probs, y_test, ref["probs"], ref["accuracy"])
        status, reason = G.gate(scores["drop_pp"], cfg.max_drop)
        # ms_per_face: timed once the converter has finished (see time_all)
        return replace(entry, **scores, status=status, reason=reason or None, check={
            "seed": REFERENCE_SEED, "faces": REFERENCE_FACES, "probs": np.round(check, 6).tolist(),
            "atol": check_tolerance(fmt.precision, check, ref["reference_faces_probs"])})
    except Exception as e:  # converted but does not run: keep the file for inspection
        return replace(entry, status=G.FAILED, reason=f"does not run: {type(e).__name__}: {e}"[:240])


def time_all(conv: Conversions, cfg: ExportConfig) -> None:
    """ms/face (batch 1, cfg.threads) per runnable artifact, with no conversion competing for the CPU."""
    from edge_runtime.backends import load_backend
    for name, a in list(conv.artifacts.items()):
        if a.format != "keras" and a.accuracy is not None:
            conv.artifacts[name] = replace(a, ms_per_face=ms_per_face(
                load_backend(conv.staged(name, a), name, threads=cfg.threads, probe=False), conv.x_test,
                cfg.timing_runs))


def failed_entry(fmt: F.Format, reason: str, seconds) -> Artifact:
    return Artifact(format=fmt.format, precision=fmt.precision, status=G.FAILED, reason=reason,
                    convert_seconds=None if seconds is None else round(seconds, 2), notes=fmt.notes)


def _size(n) -> str:
    return f"{n / 1e6:6.2f} MB" if n >= 1e6 else f"{n / 1e3:6.0f} KB"


def _line(name: str, a: Artifact) -> str:
    if a.status == G.FAILED and a.accuracy is None:
        return f"{name:15s} FAILED     {a.reason}"
    return (f"{name:15s} {a.precision:9s}  {_size(a.size)}  {a.convert_seconds:5.1f} s  "
            f"acc {100 * a.accuracy:.2f} %  drop {a.drop_pp:+.2f} pp  agree {100 * a.agreement:.1f} %  "
            f"{a.status}" + (f" ({a.reason})" if a.reason else ""))


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"converter process died ({signal.Signals(-code).name})"
        except ValueError:
            return f"converter process died (signal {-code})"
    return f"converter process exited with code {code}"
