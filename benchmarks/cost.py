"""What a candidate architecture costs before you train it: ``python -m benchmarks.cost``.

For each variant: parameters, full-int8 TFLite size and per-face latency (LiteRT, batch 1,
untrained weights calibrated on real faces - latency hardly depends on the weights), and the
training step time at the recipe's batch size, extrapolated to seconds per epoch. This is how the
default `cbilstm` stem was chosen: the int8 latency budget is the fer peer's, the training
budget 60 minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _variant(text: str) -> dict:
    """'stem=16-32s-p-64,lstm_units=96' -> {'stem': '16-32s-p-64', 'lstm_units': 96}."""
    from train.__main__ import key_value  # the same KEY=VALUE parsing as python -m train --param
    return dict(key_value(part) for part in filter(None, text.split(",")))


class _Ctx:
    """The two things export's TFLite converters ask of their context."""

    def __init__(self, model, calibration):
        self._m, self._c = model, calibration

    def unrolled_model(self):
        return self._m

    def calibration(self):
        return self._c


def measure(model_name: str, params: dict, faces: np.ndarray, labels: np.ndarray, batch_size: int,
            train_images: int, steps: int = 10, precision: str = "float32") -> dict:
    from export.study import tflite_runner
    from export.tflite import convert_int8
    from train.fit import dtype_policy
    from train.models import build

    from .latency import per_face_latency
    unrolled = build(model_name, params, unroll=True)
    blob = convert_int8(_Ctx(unrolled, faces[:200]))
    run, _ = tflite_runner(blob, xnnpack=True)
    lat = per_face_latency(run, faces[:64])
    with dtype_policy(precision):  # time the step as python -m train runs it
        model = build(model_name, params)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    reps = int(np.ceil(batch_size / len(faces)))
    xb, yb = np.concatenate([faces] * reps)[:batch_size], np.concatenate([labels] * reps)[:batch_size]
    for _ in range(2):  # trace and warm up
        model.train_on_batch(xb, yb)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(xb, yb)
    step = (time.perf_counter() - t0) / steps
    return {"parameters": int(model.count_params()), "precision": precision, "int8_kb": len(blob) / 1024,
            "int8_ms_p50": lat["p50_ms"], "train_step_s": step,
            "epoch_s_est": step * train_images / batch_size}


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from train.models import DEFAULT_MODEL, REGISTRY
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cost", description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog="examples:\n  python -m benchmarks.cost stem=16-32s-32-p-64-64-p-128-128 stem=32-32-p-64-64-p-128-128\n"
               "Figures are for this machine and its current load; compare variants from one run.\n\n"
               "exit codes: 0 done; 2 bad arguments or data (one line on stderr)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", type=_variant, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="architecture overrides, one row each (none: the model as registered)")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(REGISTRY))
    p.add_argument("--data", help="FER2013 root (default: $FER_DATA, else ../shared/data/fer2013)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    from edge_runtime.preprocess import scale_pixels

    from train.data import DataError, load_dataset
    from train.fit import TrainConfig, resolve_precision
    rows, datasets = [], {}
    try:
        for variant in args.variants or [{}]:
            cfg = TrainConfig(model=args.model, params=variant)
            params, recipe, spec = cfg.resolved()
            if spec not in datasets:  # variants usually share one input size
                datasets[spec] = load_dataset(args.data, spec, cfg.val_fraction, cfg.seed, progress=False)
            data = datasets[spec]
            idx = np.random.default_rng(0).choice(len(data.train), 256, replace=False)
            faces, labels = scale_pixels(data.train.images[idx], spec), data.train.labels[idx]
            row = {"variant": variant or "registered", **measure(args.model, params, faces, labels,
                                                                recipe.batch_size, len(data.train),
                                                                precision=resolve_precision(recipe.precision))}
            rows.append(row)
            print(f"{json.dumps(row['variant'])}: {row['parameters']:,} params, int8 {row['int8_kb']:.0f} KB, "
                  f"{row['int8_ms_p50']:.3f} ms/face (1 thread), train step {row['train_step_s']:.3f} s "
                  f"-> ~{row['epoch_s_est']:.0f} s/epoch", flush=True)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"load average {os.getloadavg()[0]:.1f} (timings are only comparable on an idle machine)")
    if args.json:
        from edge_runtime.manifest import atomic_write_json
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
