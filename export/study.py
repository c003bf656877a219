"""The int8 speed study: ``python -m export.study --model RUN_DIR`` (a workstation tool).

Converts one trained model into every TFLite form worth comparing - unrolled LSTMs (what export
writes) vs tf_keras' fused UNIDIRECTIONAL_SEQUENCE_LSTM (thesis model only), fp32 / dynamic-range /
full int8 (8x8) / 16x8 - plus the ONNX pair, and times each on 1 thread, batch 1, with LiteRT's
default XNNPACK delegate and without it. Accuracy and agreement are measured on ``--n`` test images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_runtime.backends import quantize
from edge_runtime.manifest import atomic_write_text
from edge_runtime.outputs import OutputError, add_overwrite_flag, claim_file, model_files, record_file
from edge_runtime.cli import command


def _time(fn, x, runs):
    for _ in range(10):
        fn(x[:1])
    t = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(x[i % len(x): i % len(x) + 1])
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t)), 1000 * float(np.min(t))


def tflite_runner(data: bytes, xnnpack: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kw = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = Interpreter(model_content=data, num_threads=1, **kw)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]

    def run(x):
        if np.dtype(i["dtype"]).kind in "iu":
            s, z = i["quantization"]
            x = quantize(x, s, z, i["dtype"])
        it.set_tensor(i["index"], x)
        it.invoke()
        y = it.get_tensor(o["index"])
        if np.dtype(o["dtype"]).kind in "iu":
            s, z = o["quantization"]
            y = (y.astype(np.float32) - z) * s
        return y
    ops = sorted({d["op_name"] for d in it._get_ops_details()}) if hasattr(it, "_get_ops_details") else []
    return run, ops


def onnx_runner(data: bytes):
    import onnxruntime as ort

    from edge_runtime.backends import onnx_session_options
    s = ort.InferenceSession(data, onnx_session_options(1), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def fused_thesis(model, params):
    """The thesis model rebuilt in tf_keras (fused TFLite LSTM kernels), trained weights copied."""
    import tf_keras as tk
    L = tk.layers
    size, rh, ch = params["size"], params["row_hidden"], params["col_hidden"]
    inp = tk.Input((size, size, 1), batch_size=1)
    x = L.Reshape((size, size))(inp)
    x = L.Bidirectional(L.LSTM(rh, return_sequences=True))(x)
    for _ in range(4):
        x = L.LSTM(rh, return_sequences=True)(x)
    x = L.LSTM(ch)(x)
    x = L.Dense(64, activation="relu")(x)
    x = L.Dense(64, activation="relu")(x)
    out = L.Dense(7, activation="softmax")(x)
    m = tk.Model(inp, out)
    m.set_weights(model.get_weights())
    return m


def _inputs(args):
    """-> (run, converter context, test faces x, labels y, the Keras reference's probabilities)."""
    from edge_runtime.preprocess import scale_pixels
    from train.data import load_dataset
    from .pipeline import calibration_set, resolve_source
    from .worker import Context

    run_dir, run = resolve_source(args.model)
    spec = run.preprocessing
    data = load_dataset(args.data, spec, progress=False)
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(data.test), min(args.n, len(data.test)), replace=False))
    x, y = scale_pixels(data.test.images[idx], spec), data.test.labels[idx]
    cal = calibration_set(data.train, args.calibration)  # the very faces python -m export calibrates on
    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "c.npy", cal.images)
        ctx = Context(Path(d), {"model_file": str(run_dir / "model.keras"), "model_name": run.model,
                                "params": run.params, "preprocessing": spec.to_dict(),
                                "calibration_file": "c.npy"})
        ctx.calibration()
    return run, ctx, x, y, ctx.model().predict(x, batch_size=256, verbose=0)


def _tflite_forms(run, ctx) -> dict:
    """name -> a function returning TFLite bytes: the exporter's unrolled forms, and for the thesis
    model the fused-LSTM forms of tf_keras (to show what the fused kernel costs in accuracy)."""
    import tensorflow as tf

    from . import tflite as T
    forms = {"tflite fp32 unrolled": lambda: T.convert_fp32(ctx),
             "tflite dr unrolled": lambda: T.convert_dynamic_range(ctx),
             "tflite int8 8x8 unrolled": lambda: T.convert_int8(ctx),
             "tflite int16x8 unrolled": lambda: T.convert_int16x8(ctx)}
    if run.model != "thesis":
        return forms

    class Fused:  # the same converters, fed the tf_keras model
        def __init__(self):
            self.m = fused_thesis(ctx.model(), run.params)

        def unrolled_model(self):
            return self.m

        calibration = ctx.calibration
    fctx = Fused()
    import tf_keras  # noqa: F401

    def conv_fused(kind):
        def go():
            c = tf.lite.TFLiteConverter.from_keras_model(fctx.m)
            if kind != "fp32":
                c.optimizations = [tf.lite.Optimize.DEFAULT]
                c.representative_dataset = T._representative(fctx)
                c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                c.inference_input_type = c.inference_output_type = tf.int8
            return c.convert()
        return go
    forms["tflite fp32 fused (tf_keras)"] = conv_fused("fp32")
    forms["tflite int8 8x8 fused (tf_keras)"] = conv_fused("int8")
    return forms


def _tflite_rows(forms: dict, x, y, ref, runs: int) -> list[dict]:
    """Convert each form, then score and time it with and without XNNPACK."""
    rows = []
    for name, conv in forms.items():
        t0 = time.perf_counter()
        try:
            b = conv()
        except Exception as e:  # noqa: BLE001
            rows.append({"form": name, "error": str(e).split("\n")[0][:120]})
            print(rows[-1], flush=True)
            continue
        secs = time.perf_counter() - t0
        for xnn in (True, False):
            run_fn, _ = tflite_runner(b, xnn)
            probs = np.concatenate([run_fn(x[i:i + 1]) for i in range(len(x))])
            med, mn = _time(run_fn, x, runs)
            rows.append({"form": name, "xnnpack": xnn, "kb": len(b) // 1024, "convert_s": round(secs, 1),
                         "acc": float(np.mean(probs.argmax(1) == y)),
                         "agree": float(np.mean(probs.argmax(1) == ref.argmax(1))),
                         "ms_median": round(med, 3), "ms_min": round(mn, 3)})
            print(rows[-1], flush=True)
    return rows


def _onnx_rows(ctx, x, y, ref, runs: int) -> list[dict]:
    from . import onnx as O
    rows = []
    for name, b in (("onnx fp32 (LSTM op)", O.convert_fp32(ctx)), ("onnx int8 dynamic", O.convert_int8(ctx))):
        r = onnx_runner(b)
        probs = np.concatenate([r(x[i:i + 256]) for i in range(0, len(x), 256)])
        med, mn = _time(r, x, runs)
        rows.append({"form": name, "kb": len(b) // 1024, "acc": float(np.mean(probs.argmax(1) == y)),
                     "agree": float(np.mean(probs.argmax(1) == ref.argmax(1))), "ms_median": round(med, 3),
                     "ms_min": round(mn, 3)})
        print(rows[-1], flush=True)
    return rows


@command("python -m export.study", bad_input=(OutputError,), tf_log="3")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run folder")
    p.add_argument("--data", metavar="DIR", help="data root (default: $FER_DATA, else ../shared/data/fer2013)")
    p.add_argument("--n", type=int, default=1000, help="test images for accuracy/agreement")
    p.add_argument("--runs", type=int, default=300, help="timed single-face calls per form")
    p.add_argument("--calibration", type=int, default=500)
    p.add_argument("--json", help="write the table here as JSON")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    if args.json:
        from train.data import data_root_or_none
        claim_file(args.json, writer="python -m export.study", inputs=model_files(args.model),
                   data=[data_root_or_none(args.data)], flag="--json", overwrite=args.overwrite)
    from train.threads import tf_threads
    tf_threads(1)
    run, ctx, x, y, ref = _inputs(args)
    rows = _tflite_rows(_tflite_forms(run, ctx), x, y, ref, args.runs) + _onnx_rows(ctx, x, y, ref, args.runs)
    print(f"keras reference accuracy on these {len(x)} images: {np.mean(ref.argmax(1) == y):.4f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))
        record_file(args.json, "python -m export.study")
    return 0


if __name__ == "__main__":
    sys.exit(main())
