"""Instructions per face on an AVX2-only x86's code path, counted by valgrind: a cost figure for
CPUs without int8 dot products that any machine can reproduce.

Valgrind's virtual x86 CPU reports AVX2 but neither AVX-512 nor VNNI, so LiteRT's XNNPACK picks the
kernels an AVX2-only x86 runs, whatever the host has; callgrind counts the instructions they execute,
the same on any host and under any load: only instructions inside Invoke are counted, so
repeated runs agree to within 0.1 %. The run is refused if a kernel for AVX-512 or VNNI shows up
in the profile. An instruction count is not a time: int8 multiply-adds without dot products take
several instructions each, a float FMA one, so set the counts beside a timing on such a CPU where one
exists (benchmarks/results/x86_64-avx2-2core.md).

    python -m benchmarks.instructions edge_runtime/models/cbilstm-lite edge_runtime/models/cbilstm --peer fer
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edge_runtime.cli import command, error

from .cpu_mask import MASKS
from .peers import PeerError

WRITER = "python -m benchmarks.instructions"
INVOKE = "tflite::interpreter_wrapper::InterpreterWrapper::Invoke*"  # LiteRT's Python-facing invoke
FORBIDDEN = MASKS["avx2"]  # kernels an AVX2-only CPU does not have


class InstructionError(Exception):
    pass


def tflite_file(folder_or_file: str) -> tuple[str, Path]:
    """(name, .tflite path): a file as given, or an artifacts folder's usable int8 TFLite artifact."""
    p = Path(folder_or_file)
    if p.is_file() and p.suffix == ".tflite":
        return p.stem, p
    from edge_runtime.manifest import ManifestError, artifact_path, read_manifest
    try:
        man = read_manifest(p)
    except ManifestError as e:
        raise InstructionError(str(e)) from None
    for name, art in man.usable().items():
        if art.format == "tflite" and "int8" in str(art.precision):
            return f"{man.model} {name}", artifact_path(man, name)
    raise InstructionError(f"{p} has no usable int8 TFLite artifact")


def _child(path: str, invokes: int) -> None:
    """Run inside valgrind: load the model, invoke it ``invokes`` times on one input."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    rng = np.random.default_rng(0)  # kernels' instruction counts do not depend on the pixel values
    x = (rng.integers(-128, 128, d["shape"]) if np.issubdtype(d["dtype"], np.integer) else rng.random(d["shape"]))
    x = x.astype(d["dtype"])
    for _ in range(invokes):
        it.set_tensor(d["index"], x)
        it.invoke()


def _collected(path: Path, invokes: int, work: Path) -> tuple[int, list[str]]:
    out = work / f"callgrind.{invokes}.out"
    # Only instructions inside Invoke count: Python's start-up and the model's loading vary by tens of
    # millions between runs (hash seeds, allocator state), which swamped the per-face figure before.
    r = subprocess.run(["valgrind", "--tool=callgrind", f"--toggle-collect={INVOKE}", f"--callgrind-out-file={out}",
                        sys.executable, "-m", "benchmarks.instructions", "--child", str(path), str(invokes)],
                       capture_output=True, text=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"})
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or m is None:
        raise InstructionError(f"valgrind on {path.name} failed: {r.stderr.strip().splitlines()[-1:]}")
    kernels = sorted({ln.split(")", 1)[-1].strip() for ln in out.read_text(errors="replace").splitlines()
                      if ln.startswith("fn=") and "xnn_" in ln})
    if not kernels:  # Invoke not found (a renamed symbol) would count nothing and check no kernel
        raise InstructionError(f"valgrind counted no XNNPACK kernel inside {INVOKE} for {path.name}")
    return int(m.group(1)), kernels


def count(path: Path, invokes: int = 100) -> dict:
    """Instructions per invocation, counted inside Invoke only: the difference between 1 + ``invokes``
    and 1 invocation, so the first invocation's one-off set-up is not counted either."""
    if shutil.which("valgrind") is None:
        raise InstructionError("valgrind is not installed (apt install valgrind)")
    with tempfile.TemporaryDirectory(prefix="fer-instr-") as tmp:
        base, _ = _collected(path, 1, Path(tmp))
        total, kernels = _collected(path, 1 + invokes, Path(tmp))
    if total <= base:
        raise InstructionError(f"valgrind counted no work per invocation of {path.name}")
    return {"instructions": (total - base) / invokes, "kernels_isa": kernel_isas(kernels),
            "gemm_kernels": [k for k in kernels if "gemm" in k][:4]}


def kernel_isas(kernels: list[str]) -> list[str]:
    """The instruction sets XNNPACK's kernels were written for; an error if one is beyond AVX2."""
    bad = [k for k in kernels if FORBIDDEN.search(k)]
    if bad:
        raise InstructionError(f"valgrind's CPU offered kernels an AVX2-only x86 lacks: {', '.join(bad[:3])}")
    return sorted({m.group(1) for k in kernels if (m := re.search(r"__(avx2|avx|sse\d+|fma3)", k))})


@command(WRITER, bad_input=(InstructionError, PeerError, ValueError))  # OutputError is a ValueError
def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(prog=WRITER, description=__doc__.split("\n\n")[0].replace("\n", " "),
                                epilog="example:\n  " + __doc__.strip().splitlines()[-1].strip() +
                                       "\n\nexit codes: 0 done; 1 valgrind failed; 2 bad arguments (one line)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="artifacts folders (their int8 TFLite artifact) or .tflite files")
    p.add_argument("--peer", action="append", default=[], help="also count a peer's model (fer)")
    p.add_argument("--invokes", type=int, default=100, help="invocations counted per model (default 100)")
    p.add_argument("--md", help="also write the table here (Markdown)")
    from edge_runtime.outputs import add_overwrite_flag, claim_file, record_file
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    from benchmarks.macs import count as count_macs
    from benchmarks.peers import locate
    if args.invokes < 1:
        raise InstructionError("--invokes must be at least 1")
    targets = [tflite_file(m) for m in args.models] + [(f"peer {n}", locate(n)) for n in args.peer]
    if args.md:
        claim_file(args.md, writer=WRITER, inputs=[t[1] for t in targets], flag="--md", overwrite=args.overwrite)
    rows = []
    for name, path in targets:
        try:
            res = count(path, args.invokes)
        except InstructionError as e:  # valgrind ran and failed: the work failed, not the input
            error(WRITER, e)
            return 1
        rows.append({"model": name, "file": path.name, "macs": count_macs(path)["macs"], **res})
        print(f"{name}: {res['instructions'] / 1e6:.2f} M instructions/face", file=sys.stderr, flush=True)
    ref = rows[-1]["instructions"] if args.peer else None
    lines = ["Instructions per face on an AVX2-only x86's code path (valgrind's virtual CPU: AVX2, no AVX-512, "
             f"no VNNI; kernels {', '.join(sorted({i for r in rows for i in r['kernels_isa']}))}), 1 thread, batch 1, "
             f"mean of {args.invokes} invocations, counted inside Invoke only; counts repeat within 0.1 % on any host.", "",
             "| model | file | M MACs/face | M instructions/face | instructions per MAC |" + (" × peer |" if ref else ""),
             "|---|---|---|---|---|" + ("---|" if ref else "")]
    for r in rows:
        lines.append(f"| {r['model']} | {r['file']} | {r['macs'] / 1e6:.2f} | {r['instructions'] / 1e6:.2f} | "
                     f"{r['instructions'] / r['macs']:.2f} |" + (f" {r['instructions'] / ref:.2f} |" if ref else ""))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        Path(args.md).write_text(text)
        record_file(args.md, WRITER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
