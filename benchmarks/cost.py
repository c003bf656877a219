"""What a candidate architecture costs before you train it: ``python -m benchmarks.cost``.

For each variant: parameters, multiply-accumulates per face (counted from the int8 TFLite graph:
the cost on any CPU, benchmarks/macs.py), full-int8 TFLite size and per-face latency (LiteRT,
batch 1, untrained weights calibrated on real faces - latency hardly depends on the weights), and
the training step time at the recipe's batch size, extrapolated to seconds per epoch. The
default `cbilstm` stem was chosen this way on a CPU with int8 dot products; the budget for a
CPU without them (a Raspberry Pi 4 or 3) is the fer peer's 10.2 M MACs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from edge_runtime.cli import command
from train.data import DataError

from . import cpu_mask
from .instructions import InstructionError
from .peers import PEERS, PeerError


def _variant(text: str) -> dict:
    """'stem=16-32s-p-64,lstm_units=96' -> {'stem': '16-32s-p-64', 'lstm_units': 96}."""
    from train.__main__ import key_value  # the same KEY=VALUE parsing as python -m train --param
    return dict(key_value(part) for part in filter(None, text.split(",")))


class _Ctx:
    """The two things export's TFLite converters ask of their context."""

    def __init__(self, model, calibration, model_name: str):
        self._m, self._c, self.model_name = model, calibration, model_name

    def unrolled_model(self):
        return self._m

    def calibration(self):
        return self._c


def measure(model_name: str, params: dict, faces: np.ndarray, labels: np.ndarray, batch_size: int,
            train_images: int, steps: int = 10, precision: str = "float32", train_step: bool = True,
            instructions: bool = False) -> dict:
    from export.study import tflite_runner
    from export.tflite import convert_int8
    from train.recipe import dtype_policy
    from train.models import build

    from .latency import per_face_latency
    from .macs import count_tflite
    import keras
    keras.utils.set_random_seed(0)  # the same untrained weights every run: a conversion that works once works always
    unrolled = build(model_name, params, unroll=True)
    blob = convert_int8(_Ctx(unrolled, faces[:200], model_name))
    run, _ = tflite_runner(blob, xnnpack=True)
    lat = per_face_latency(run, faces[:64])
    row = {"parameters": int(unrolled.count_params()), "macs": count_tflite(blob)["macs"], "precision": precision,
           "int8_kb": len(blob) / 1024, "int8_ms_p50": lat["p50_ms"]}
    if instructions:  # MACs miss what the kernels do beside products (a one-channel conv padded to eight)
        row["avx2_instructions"] = _avx2_instructions(blob)
    if not train_step:
        return row
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
    return {**row, "train_step_s": step, "epoch_s_est": step * train_images / batch_size}


def _avx2_instructions(blob: bytes) -> float:
    """Instructions per face on an AVX2-only x86's code path (benchmarks.instructions), any host."""
    import tempfile

    from .instructions import count
    with tempfile.TemporaryDirectory(prefix="fer-cost-") as tmp:
        path = Path(tmp) / "variant.tflite"
        path.write_bytes(blob)
        return count(path, invokes=50)["instructions"]  # an InstructionError if valgrind is missing


def peer_latency(name: str) -> dict:
    """The peer's per-face latency, timed like the variants (LiteRT, batch 1, 1 thread) in the same run."""
    from export.study import tflite_runner

    from edge_runtime.paths import cache_dir

    from .latency import per_face_latency
    from .peers import peer_manifest_dir
    folder = peer_manifest_dir(name, cache_dir("peers"))
    blob = (folder / PEERS[name]["file"].rsplit("/", 1)[-1]).read_bytes()
    run, _ = tflite_runner(blob, xnnpack=True)
    size = PEERS[name]["preprocessing"].size
    faces = np.random.default_rng(0).uniform(-1, 1, (64, size, size, 1)).astype(np.float32)
    return per_face_latency(run, faces)


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--no-train-step", dest="train_step", action="store_false",
                   help="skip timing a training step (a quick sweep of MACs, size and int8 latency)")
    p.add_argument("--instructions", action="store_true",
                   help="also count instructions per face on an AVX2-only x86's code path with valgrind "
                        "(about a minute per variant; the cost on a CPU without int8 dot products, any host)")
    p.add_argument("--peer", choices=sorted(PEERS), help="also time this peer model in the same run (× peer column)")
    cpu_mask.add_flag(p)
    p.add_argument("--json", help="also write the rows here")
    from edge_runtime.outputs import add_overwrite_flag
    add_overwrite_flag(p)
    return p


def _line(row: dict, peer_name: str | None) -> str:
    """One variant's row as printed."""
    train = (f", train step {row['train_step_s']:.3f} s -> ~{row['epoch_s_est']:.0f} s/epoch"
             if "train_step_s" in row else "")
    instr = (f", {row['avx2_instructions'] / 1e6:.2f} M instructions/face on the AVX2 path"
             if "avx2_instructions" in row else "")
    vs = f" ({row['x_peer']:.2f}× {peer_name})" if "x_peer" in row else ""
    return (f"{json.dumps(row['variant'])}: {row['macs'] / 1e6:.2f} M MACs/face{instr}, {row['parameters']:,} params, "
            f"int8 {row['int8_kb']:.0f} KB, {row['int8_ms_p50']:.3f} ms/face (1 thread){vs}{train}")


@command("python -m benchmarks.cost", bad_input=(DataError, InstructionError, ValueError, PeerError,
                                                 cpu_mask.CpuMaskError), tf_log="3")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.mask_cpu and cpu_mask.active() is None:
        return cpu_mask.rerun(args.mask_cpu, "benchmarks.cost", sys.argv[1:] if argv is None else list(argv))
    mask = cpu_mask.active()
    from edge_runtime.preprocess import scale_pixels

    from train.data import load_dataset
    from train.recipe import TrainConfig, resolve_precision
    from edge_runtime.outputs import claim_file, record_file
    from train.data import data_root_or_none
    rows, datasets = [], {}
    if args.json:
        claim_file(args.json, writer="python -m benchmarks.cost", data=[data_root_or_none(args.data)], flag="--json",
                   overwrite=args.overwrite)
    peer = peer_latency(args.peer) if args.peer else None
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
                                                            precision=resolve_precision(recipe.precision),
                                                            train_step=args.train_step,
                                                            instructions=args.instructions)}
        if peer is not None:
            row["x_peer"] = row["int8_ms_p50"] / peer["p50_ms"]
        rows.append(row)
        print(_line(row, args.peer), flush=True)
    from edge_runtime.cpu import cpu_class
    where = f"the AVX2 code path (CPUID masked to {mask}) of {cpu_class()}" if mask else cpu_class()
    if peer is not None:
        print(f"peer {args.peer}: {peer['p50_ms']:.3f} ms/face (1 thread, same run)")
    print(f"timings on {where}; load average {os.getloadavg()[0]:.1f} (timings are only comparable on an "
          "idle machine; MACs on any)")
    if args.json:
        from edge_runtime.manifest import atomic_write_json
        atomic_write_json(args.json, rows)
        record_file(args.json, "python -m benchmarks.cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
