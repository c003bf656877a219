"""python -m export: turn a trained run folder into gated TFLite/ONNX artifacts + manifest.json."""
from __future__ import annotations

import argparse
import signal
import sys

from edge_runtime.cli import command

from .pipeline import ExportError


def build_parser() -> argparse.ArgumentParser:
    from .formats import FORMATS
    table = "\n".join(f"  {f.name:15s} {f.notes}{'  [--int8]' if f.int8 and not f.extra else ''}"
                      f"{'  [extra: --extras or --formats]' if f.extra else ''}" for f in FORMATS)
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Convert a trained model (a run folder from python -m train) to TFLite and ONNX, "
                    "score every artifact on the whole test split against the Keras model, reject any "
                    "whose accuracy moves by more than --max-drop percentage points, and write the "
                    "artifacts, manifest.json (what the edge runtime reads) and export_report.md/json.",
        epilog=f"artifacts:\n  keras           the source model, the reference every drop is measured against\n"
               f"{table}\n\n"
               "exit codes: 0 all written and within the limit; 1 an artifact was rejected by the gate or\n"
               "failed to convert (it is named; nothing is committed: the live manifest in --out stays, this\n"
               "export's files go to OUT/rejected/ for inspection); 2 missing model or data, a test split\n"
               "lacking a class, or a bad argument.\n\n"
               "examples:\n"
               "  python -m export --int8                          # models/cbilstm -> artifacts/cbilstm/\n"
               "  python -m export --int8 --model runs/thesis      # a run folder -> artifacts/thesis/\n"
               "  python -m export --int8 --max-drop 0.5 --calibration 1000\n"
               "  python -m export --formats tflite-int8,tflite-int16x8 --out /tmp/try",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="RUN_DIR_OR_MODEL",
                   help="run folder holding model.keras + manifest.json, or a shipped model's name "
                        "(models/<name>/); default: models/cbilstm")
    p.add_argument("--data", metavar="DIR",
                   help="FER2013 root (train/+test/, train/+validation/ or fer2013.csv); "
                        "default: $FER_DATA, else ../shared/data/fer2013")
    p.add_argument("--out", metavar="DIR", help="output folder: new, empty, or an earlier export's (default: "
                                                "artifacts/<run folder name>); files an export did not write are "
                                                "never replaced or removed")
    p.add_argument("--packaged", action="store_true",
                   help="replace the model the package ships (edge_runtime/models/<model>/) instead of --out: "
                        "what make artifacts does; it leaves out the Keras file and the worker log, which a "
                        "device does not need")
    p.add_argument("--int8", action="store_true", help="also write the int8 artifacts (tflite-int8, onnx-int8)")
    from .gate import MAX_DROP_PP
    p.add_argument("--max-drop", type=float, default=MAX_DROP_PP, metavar="PP",
                   help="largest accuracy change vs Keras, in percentage points, for an artifact to be "
                        f"usable (default {MAX_DROP_PP:.1f}; two-sided: gains count too)")
    p.add_argument("--calibration", type=int, default=500, metavar="N",
                   help="train images (stratified, never test) that calibrate int8 ranges (default 500)")
    p.add_argument("--formats", metavar="A,B", help="write exactly these artifacts (comma-separated names)")
    p.add_argument("--extras", action="store_true", help="also write tflite-dr and tflite-int16x8")
    p.add_argument("--allow-partial", action="store_true",
                   help="exit 0 even if a format fails to convert (the gate still applies)")
    p.add_argument("--fraction", metavar="SHARE", type=float, default=1.0,
                   help="thin test/ (what every artifact is scored on) and train/ (the int8 calibration pool) "
                        "to this stratified share, for quick checks (default 1.0)")
    p.add_argument("--threads", metavar="N", type=int, default=1,
                   help="inference threads for scoring and ms/face, 1 .. the CPUs (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars while loading data")
    return p


def _interrupt(signum, frame):
    """SIGTERM/SIGINT -> Interrupted: the export cleans its staging and says what is live."""
    from .pipeline import Interrupted
    raise Interrupted(signum)


# Ctrl-C before the export's own handlers are in place (its imports): nothing written yet
@command("python -m export", bad_input=(ExportError, ValueError), tf_log="3",
         interrupted="interrupted; nothing was written")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from edge_runtime.config import check_threads

    from .pipeline import ExportConfig, Interrupted, run_export
    if not 1 <= args.calibration <= 100_000:
        raise ValueError("--calibration must be in [1, 100000]")
    if not 0.0 <= args.max_drop <= 100.0:  # also refuses NaN
        raise ValueError("--max-drop must be percentage points in [0, 100]")
    if not 0.0 < args.fraction <= 1.0:
        raise ValueError("--fraction must be in (0, 1]")
    check_threads(args.threads, "--threads")
    cfg = ExportConfig(model=args.model, data=args.data, out=args.out, int8=args.int8,
                       max_drop=args.max_drop, calibration=args.calibration,
                       formats=[s.strip() for s in args.formats.split(",")] if args.formats else None,
                       extras=args.extras, allow_partial=args.allow_partial, fraction=args.fraction,
                       packaged=args.packaged,
                       threads=args.threads, progress=not args.quiet)
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _, code = run_export(cfg)
    except Interrupted as e:
        print(f"python -m export: {e}; nothing half-written: {getattr(e, 'live', 'nothing was written yet')}",
              file=sys.stderr)
        return 128 + e.signum
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return code


if __name__ == "__main__":
    sys.exit(main())
