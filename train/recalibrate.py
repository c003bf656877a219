"""``python -m train.recalibrate RUN --out DIR``: BatchNorm re-estimation for a run trained without it.

``python -m train`` re-estimates the BatchNorm statistics itself when the recipe says so
(``bn_recalibration``, on for cbilstm). This applies the same step to an existing run folder:
same data split (checked by the manifest's file hash), same code, weights otherwise untouched.
The new folder is a complete run — model, reports, manifest scored once on the test split — and
its manifest names the run it came from; ``train_seconds`` is the source's fitting time plus the
re-estimation (a source that was re-estimated already is re-estimated again, to the same statistics).
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

from edge_runtime.manifest import Manifest, ManifestError, atomic_write_json, read_manifest, verify_file

from .data import DataError, load_dataset, skipped_note
from edge_runtime.cli import command

COPIED = ("history.csv", "class_distribution.png", "samples.png")  # unchanged by the re-estimation


def read_history(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k not in ("epoch", "lr", "seconds")}


def recalibrate_run(run_dir, out_dir, data_root=None, progress: bool = True) -> Manifest:
    """Re-estimate BatchNorm in ``run_dir``'s model on its own training faces; write ``out_dir`` whole."""
    from .data import resolve_root
    from edge_runtime.outputs import model_files

    from .fit import staged_run_folder
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    m = read_manifest(run_dir)
    if m.kind != "run":
        raise ManifestError(f"{run_dir} is not a training run folder (manifest kind {m.kind!r})")
    model_path = run_dir / m.model_file
    verify_file(model_path, m.model_sha256)
    with staged_run_folder(out_dir, model_files(run_dir), data=[resolve_root(data_root)]) as work:
        return _recalibrate_into(m, run_dir, work, data_root, progress)


def _recalibrate_into(m: Manifest, run_dir: Path, out_dir: Path, data_root, progress: bool) -> Manifest:
    from .evaluate import finish_run, recalibrate
    from .models import Recipe
    spec, d = m.preprocessing, m.data
    model_path = run_dir / m.model_file
    data = load_dataset(data_root, spec, d["val_fraction"], m.seed, d["fraction"], progress)
    summary = data.summary()
    if note := skipped_note(train=data.train, test=data.test):
        print(f"warning: {note}", file=sys.stderr)
    if summary["files_hash"] != d["files_hash"]:
        raise DataError(f"the data at {summary['root']} differ from the data {run_dir} was trained on "
                        "(file hash mismatch): pass --data with the run's data")
    import keras  # only now: bad paths and data are reported without starting TensorFlow
    model = keras.models.load_model(model_path, compile=False)
    bn = recalibrate(model, data, spec, progress)
    if bn is None:
        raise DataError(f"{m.model} has no BatchNorm layers: nothing to re-estimate")
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    atomic_write_json(out_dir / "data_report.json", summary)
    known = set(Recipe.__dataclass_fields__)
    recipe = asdict(replace(Recipe(**{k: v for k, v in m.recipe.items() if k in known}), bn_recalibration=True))
    run = {"model": m.model, "params": m.params, "recipe": recipe, "precision": m.precision,
           "seed": m.seed, "init_seed": m.seed if m.init_seed is None else m.init_seed, "fraction": d["fraction"],
           "teacher": m.teacher, "saliency_per_class": 2}
    history = read_history(run_dir / "history.csv") if (run_dir / "history.csv").is_file() else {"loss": []}
    source = {"run": str(run_dir.resolve()), "model_sha256": m.model_sha256, "train_seconds": m.train_seconds,
              "command": m.command, "test": m.metrics["test"]}
    # the source's fitting time (without any earlier re-estimation, which this one replaces) + this pass
    fit_seconds = m.train_seconds - ((m.bn_recalibration or {}).get("seconds") or 0.0)
    return finish_run(model, run, data, spec, summary, history, fit_seconds + bn["seconds"], bn, out_dir,
                      extra={"recalibrated_from": source})


@command("python -m train.recalibrate", bad_input=(DataError, ManifestError, OSError, ValueError, KeyError), tf_log="2")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.recalibrate",
        description="Re-estimate the BatchNorm statistics of a trained run on its clean training faces "
                    "(what python -m train does after fitting when the recipe sets bn_recalibration) and "
                    "write the result as a new run folder, scored once on the test split.",
        epilog="examples:\n  python -m train.recalibrate runs/cbilstm-r --out runs/cbilstm-r-bn\n\nexit codes: 0 done; 2 bad arguments or data (one line on stderr)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder written by python -m train")
    p.add_argument("--out", type=Path, help="new run folder to write (default: RUN-bn)")
    p.add_argument("--data", metavar="DIR",
                   help="data root the run was trained on (default: $FER_DATA, else ../shared/data/fer2013)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    out = args.out or args.run.with_name(args.run.name + "-bn")
    m = recalibrate_run(args.run, out, args.data, progress=not args.quiet)
    bn, t, before = m.bn_recalibration, m.metrics["test"], m.recalibrated_from["test"]
    val = (f"; validation {bn['val_accuracy_before']:.2%} -> {bn['val_accuracy_after']:.2%}"
           if bn["val_accuracy_before"] is not None else "")
    print(f"{m.model}: test accuracy {before['accuracy']:.2%} -> {t['accuracy']:.2%}, macro-F1 "
          f"{before['macro_f1']:.3f} -> {t['macro_f1']:.3f}{val}; {bn['layers']} BatchNorm layers, "
          f"{bn['seconds']:.0f} s")
    print(f"run folder: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
