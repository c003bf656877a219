"""Soft labels from teacher runs, for knowledge distillation: ``python -m train.distill``.

A teacher is any run folder (``python -m train`` output). The ensemble's class probabilities,
averaged over the teachers and over each face and its mirror image, are computed once for every
face of ``train/`` and written to one file keyed by file name. ``python -m train --teacher FILE``
then trains on ``distill * teacher + (1 - distill) * one-hot`` targets: offline distillation
(Hinton et al. 2015; the soft labels of a clean face also serve its augmented views, as in
FKD/ReLabel), so a student costs no teacher forward passes and trains in the same time.

The file is small (float16, ~0.5 MB for FER2013) and records each teacher's sha256, its validation
split and score, so a student's manifest says exactly where its targets came from.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from edge_runtime.labels import LABELS, NUM_CLASSES, remap_indices
from edge_runtime.manifest import (ManifestError, atomic_write_bytes, read_manifest, sha256_file,
                                   verify_file)
from edge_runtime.outputs import add_overwrite_flag, claim_file, model_files, record_file
from edge_runtime.preprocess import scale_pixels

from .data import DataError, Split, load_dataset, resolve_root, skipped_note
from edge_runtime.cli import command

FORMAT = "fer-soft-labels/1"


def teacher_probs(run_dir: Path, data_root, fraction: float = 1.0, seed: int = 1337,
                  progress: bool = True) -> tuple[Split, np.ndarray, dict]:
    """One teacher's probabilities on all of train/ (canonical label order), mean of face and mirror."""
    m = read_manifest(run_dir)
    if m.kind != "run":
        raise ManifestError(f"{run_dir} is not a training run folder (manifest kind {m.kind!r})")
    path = Path(run_dir) / m.model_file
    verify_file(path, m.model_sha256)
    spec = m.preprocessing
    # val_fraction 0: every face of train/, whatever split a student will carve later
    train = load_dataset(data_root, spec, val_fraction=0.0, seed=seed, fraction=fraction, progress=progress).train
    if note := skipped_note(train=train):
        print(f"warning: {note}", file=sys.stderr)
    x = scale_pixels(train.images, spec)
    import keras  # only now: a bad teacher or data path is reported without starting TensorFlow
    model = keras.models.load_model(path, compile=False)
    p = (model.predict(x, batch_size=256, verbose=0) + model.predict(x[:, :, ::-1], batch_size=256, verbose=0)) / 2
    out = np.zeros_like(p)
    out[:, remap_indices(m.labels)] = p  # teacher's label order -> canonical
    info = {"run": str(Path(run_dir).resolve()), "model": m.model, "model_sha256": m.model_sha256,
            "val_fraction": m.data["val_fraction"], "seed": m.seed,
            "val_accuracy": m.metrics["val_accuracy"],
            "train_accuracy": float(np.mean(out.argmax(1) == train.labels))}
    return train, out, info


def make_soft_labels(teachers: list[Path], out: Path, data_root=None, fraction: float = 1.0,
                     progress: bool = True) -> dict:
    """Average the teachers' probabilities on train/ and write ``out`` (npz) atomically; -> its meta."""
    if not teachers:
        raise DataError("give at least one teacher run folder")
    files, labels, probs, infos = None, None, [], []
    for t in teachers:
        split, p, info = teacher_probs(Path(t), data_root, fraction, progress=progress)
        if files is None:
            files, labels = split.files, split.labels
        elif split.files != files:  # same files at any input size, unless a face failed to decode at one
            raise DataError(f"teacher {t} sees other train/ files than {teachers[0]}")
        probs.append(p)
        infos.append(info)
        if progress:
            val = info["val_accuracy"]
            print(f"teacher {t}: {info['model']}, accuracy on train/ {info['train_accuracy']:.2%}, "
                  f"on its validation split {'(none: a refit)' if val is None else f'{val:.2%}'}")
    mean = np.mean(probs, axis=0)
    meta = {"format": FORMAT, "labels": list(LABELS), "teachers": infos, "mirror_averaged": True,
            "faces": len(files), "ensemble_train_accuracy": float(np.mean(mean.argmax(1) == labels))}
    write_labels(out, files, labels, mean, meta)
    return meta


def write_labels(path: Path, files: list[str], labels: np.ndarray, probs: np.ndarray, meta: dict) -> None:
    """One npz (files, labels, float16 probabilities, JSON meta), written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, files=np.array(files), labels=labels, probs=probs.astype(np.float16),
                        meta=np.array(json.dumps(meta)))
    atomic_write_bytes(path, buf.getvalue())


def load_soft_labels(path: Path) -> tuple[dict[str, np.ndarray], dict, str]:
    """-> ({file: probs}, meta, sha256) of a soft-label file; one-line DataError when it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            files, probs = z["files"].tolist(), z["probs"].astype(np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"--teacher {path}: not a soft-label file from python -m train.distill ({e})") from e
    if meta.get("format") != FORMAT or probs.shape != (len(files), NUM_CLASSES) or meta.get("labels") != list(LABELS):
        raise DataError(f"--teacher {path}: not a {FORMAT} file with the {NUM_CLASSES} FER2013 labels")
    return dict(zip(files, probs)), meta, sha256_file(path)


def soft_targets(split: Split, table: dict[str, np.ndarray], weight: float) -> np.ndarray:
    """``weight * teacher + (1 - weight) * one-hot`` per face of ``split``; every face must be in the table."""
    missing = [f for f in split.files if f not in table]
    if missing:
        raise DataError(f"the teacher file has no soft labels for {len(missing)} of {len(split)} training faces "
                        f"(e.g. {missing[0]}): make it from the same data with python -m train.distill")
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[split.labels]
    soft = np.stack([table[f] for f in split.files])
    soft /= soft.sum(1, keepdims=True)  # float16 storage rounds the sums
    return (weight * soft + (1.0 - weight) * onehot).astype(np.float32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.distill",
        description="Compute a teacher ensemble's soft labels on train/ for knowledge distillation. "
                    "Train a student on them with: python -m train --teacher FILE",
        epilog="examples:\n  python -m train.distill runs/cbilstm-d runs/cbilstm-e --out runs/teacher.npz\n"
               "  python -m train --teacher runs/teacher.npz --out runs/student\n\n"
               "exit codes: 0 done; 2 bad arguments or data (one line on stderr)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teachers", nargs="+", type=Path, help="teacher run folders (model.keras + manifest.json)")
    p.add_argument("--out", type=Path, required=True, help="soft-label file to write (.npz)")
    p.add_argument("--data", metavar="DIR", help="data root (default: $FER_DATA, else ../shared/data/fer2013)")
    p.add_argument("--fraction", metavar="SHARE", type=float, default=1.0,
                   help="thin train/ (the faces labelled) to this stratified share, for quick runs (default 1.0)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_overwrite_flag(p)
    return p


@command("python -m train.distill", bad_input=(DataError, ManifestError, OSError, ValueError), tf_log="2")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    claim_file(args.out, writer="python -m train.distill", inputs=[f for t in args.teachers for f in model_files(t)],
               data=[resolve_root(args.data)], flag="--out",
               overwrite=args.overwrite)
    meta = make_soft_labels(args.teachers, args.out, args.data, args.fraction, progress=not args.quiet)
    record_file(args.out, "python -m train.distill")
    print(f"soft labels of {len(meta['teachers'])} teacher(s) for {meta['faces']:,} faces -> {args.out} "
          f"(ensemble accuracy on train/ {meta['ensemble_train_accuracy']:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
