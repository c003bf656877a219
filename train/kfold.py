"""Out-of-fold soft labels for distillation: ``python -m train.kfold teach|assemble``.

The validation split ``python -m train`` carves stays out of everything. The rest of ``train/`` is
cut into k stratified folds. Teacher i trains on the other k-1 folds and labels only fold i (each
face and its mirror image, averaged), so every training face gets a soft label from a model that
never saw it: a teacher that labels its own training faces passes on its memorised mistakes.

Each fold's labels are one small file (``models/kfold/k4-fold0.npz``: float16 probabilities, file
names, and the teacher's facts: model sha256, split hashes, validation score), committed as it
finishes, so the teachers can be trained across sessions. ``assemble`` checks that the folds cover
the training split exactly once and writes the soft-label file ``python -m train --teacher`` reads.

    python -m train.kfold teach --k 4 --fold 0 --epochs 40    # one teacher (repeat for folds 1..3)
    python -m train.kfold assemble --k 4 --out runs/kfold-k4.npz
    python -m train --teacher runs/kfold-k4.npz --out runs/student

``assemble --dir A --dir B`` averages two teachers per fold (e.g. a short and a full schedule).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from edge_runtime.labels import LABELS, NUM_CLASSES
from edge_runtime.manifest import ManifestError, read_manifest
from edge_runtime.outputs import add_overwrite_flag, claim_file, record_file
from edge_runtime.preprocess import PreprocessSpec, scale_pixels

from edge_runtime.paths import work_root

from .data import FOLD_SEED, DataError, Split, fold_of, load_dataset, resolve_root
from .distill import FORMAT, write_labels
from edge_runtime.cli import command

WRITER = "python -m train.kfold"

FOLD_FORMAT = "fer-kfold-labels/1"
FOLDS_DIR = work_root() / "models" / "kfold"


def files_hash(files: list[str]) -> str:
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def fold_file(k: int, fold: int, folder: Path = FOLDS_DIR) -> Path:
    return Path(folder) / f"k{k}-fold{fold}.npz"


def label_fold(run_dir: Path, held: Split, spec: PreprocessSpec) -> np.ndarray:
    """The teacher's probabilities on its held-out faces (canonical label order), face and mirror averaged."""
    import keras
    m = read_manifest(run_dir)
    model = keras.models.load_model(Path(run_dir) / m.model_file, compile=False)
    x = scale_pixels(held.images, spec)
    return (model.predict(x, batch_size=256, verbose=0) + model.predict(x[:, :, ::-1], batch_size=256, verbose=0)) / 2


def read_fold(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            files, labels, probs = z["files"].tolist(), z["labels"], z["probs"].astype(np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a fold file of python -m train.kfold ({e})") from e
    if meta.get("format") != FOLD_FORMAT or probs.shape != (len(files), NUM_CLASSES):
        raise DataError(f"{path}: not a {FOLD_FORMAT} file")
    return files, labels, probs, meta


def teach(k: int, fold: int, data_root, epochs: int | None, runs: Path, folder: Path, progress: bool,
          fraction: float = 1.0, extra_recipe: dict | None = None) -> dict:
    """Train teacher ``fold`` on the other folds, label its fold, write the fold file; -> its meta."""
    from .recipe import TrainConfig
    from .fit import train_run
    if not 0 <= fold < k:
        raise ValueError(f"--fold must be in [0, {k - 1}]")
    recipe = {**({"epochs": epochs} if epochs else {}), **(extra_recipe or {})}
    cfg = TrainConfig(model="cbilstm", recipe=recipe, holdout=(k, fold, FOLD_SEED), fraction=fraction,
                      progress=progress)
    _, _, spec = cfg.resolved()
    run_dir = Path(runs) / f"k{k}-fold{fold}"
    manifest = train_run(cfg, data_root, run_dir)
    data = load_dataset(data_root, spec, cfg.val_fraction, cfg.seed, fraction, progress=False)
    held = data.train.take(np.flatnonzero(fold_of(data.train.labels, k) == fold))
    probs = label_fold(run_dir, held, spec)
    meta = {"format": FOLD_FORMAT, "k": k, "fold": fold, "fold_seed": FOLD_SEED, "labels": list(LABELS),
            "faces": len(held), "held_files_hash": files_hash(held.files),
            "train_split_files_hash": data.train.files_hash(), "val_split_files_hash": data.val.files_hash(),
            "val_fraction": cfg.val_fraction, "seed": cfg.seed, "fraction": fraction,
            "held_accuracy": float(np.mean(probs.argmax(1) == held.labels)),
            "teacher": {"run": str(run_dir), "model_sha256": manifest.model_sha256,
                        "recipe": manifest.recipe, "val_accuracy": manifest.metrics["val_accuracy"],
                        "train_seconds": manifest.train_seconds}}
    write_labels(fold_file(k, fold, folder), held.files, held.labels, probs, meta)
    record_file(fold_file(k, fold, folder), WRITER)
    return meta


def assemble(k: int, out: Path, folder: Path | list[Path] = FOLDS_DIR, data_root=None) -> dict:
    """Check the k fold files (in each of ``folder``'s folders) cover the training split (of
    ``data_root``) exactly once; write the soft-label file. With several folders, each fold has a
    teacher from each, and a face's soft label is their mean: an ensemble that still never saw it."""
    folders = [Path(f) for f in (folder if isinstance(folder, (list, tuple)) else [folder])]
    sets = [[read_fold(fold_file(k, i, d)) for i in range(k)] for d in folders]
    for d, parts in zip(folders, sets):
        _check_folds(k, d, [p[3] for p in parts])
    for d, parts in zip(folders[1:], sets[1:]):
        for i, (mine, first) in enumerate(zip(parts, sets[0])):
            if mine[0] != first[0] or mine[3]["train_split_files_hash"] != first[3]["train_split_files_hash"]:
                raise DataError(f"{fold_file(k, i, d)} holds other faces than {fold_file(k, i, folders[0])}")
    parts, metas = sets[0], [p[3] for p in sets[0]]
    files = [f for p in parts for f in p[0]]
    if len(set(files)) != len(files):
        raise DataError("the folds overlap: a face has two soft labels")
    m0 = metas[0]
    data = load_dataset(data_root, PreprocessSpec(), m0["val_fraction"], m0["seed"], m0["fraction"], progress=False)
    if set(files) != set(data.train.files) or data.train.files_hash() != m0["train_split_files_hash"]:
        raise DataError(f"the folds cover {len(files):,} faces, not the {len(data.train):,} of the training split")
    if set(files) & set(data.val.files):
        raise DataError("a validation face has a soft label: the folds were cut from another split")
    labels = np.concatenate([p[1] for p in parts])
    probs = np.mean([np.concatenate([p[2] for p in s]) for s in sets], axis=0)
    teachers = [{**m["teacher"], "fold": m["fold"], "held_accuracy": m["held_accuracy"], "faces": m["faces"]}
                for s in sets for m in (p[3] for p in s)]
    meta = {"format": FORMAT, "labels": list(LABELS), "teachers": teachers, "mirror_averaged": True,
            "out_of_fold": {"k": k, "fold_seed": FOLD_SEED, "teachers_per_fold": len(folders),
                            "train_split_files_hash": m0["train_split_files_hash"],
                            "val_split_files_hash": m0["val_split_files_hash"]},
            "faces": len(files), "ensemble_train_accuracy": float(np.mean(probs.argmax(1) == labels))}
    write_labels(out, files, labels, probs, meta)
    record_file(out, WRITER)
    return meta


def _check_folds(k: int, folder: Path, metas: list[dict]) -> None:
    """Each of the k files is the fold its name says, all cut from one training split."""
    for i, m in enumerate(metas):
        if (m["k"], m["fold"], m["fold_seed"]) != (k, i, FOLD_SEED) or m["labels"] != list(LABELS):
            raise DataError(f"{fold_file(k, i, folder)} is fold {m['fold']} of k={m['k']}, not {i} of {k}")
        if m["train_split_files_hash"] != metas[0]["train_split_files_hash"]:
            raise DataError(f"fold {i} in {folder} was cut from another training split than fold 0")


@command("python -m train.kfold", bad_input=(DataError, ManifestError, OSError, ValueError), tf_log="2")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.kfold", description=__doc__.split("\n\n")[0],
                                epilog="examples:\n  python -m train.kfold teach --k 4 --fold 0 --epochs 40\n"
                                       "  python -m train.kfold assemble --k 4 --out runs/kfold-k4.npz\n"
                                       "  python -m train --teacher runs/kfold-k4.npz --out runs/student\n\n"
                                       "exit codes: 0 done; 2 bad arguments or data (one line on stderr)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teach", help="train one teacher and label its held-out fold")
    t.add_argument("--fold", type=int, required=True, help="the fold this teacher labels (0 .. k-1)")
    t.add_argument("--epochs", type=int, help="teacher epochs (default: the cbilstm recipe's)")
    t.add_argument("--runs", type=Path, default=work_root() / "runs" / "kfold", help="teacher run folders (default runs/kfold)")
    t.add_argument("--fraction", metavar="SHARE", type=float, default=1.0,
                   help="thin train/ and test/ to this stratified share, for quick runs (default 1.0)")
    t.add_argument("--threads", metavar="N", type=int, help="TensorFlow CPU threads, 1 .. the CPUs (default: all)")
    t.add_argument("--dir", type=Path, default=FOLDS_DIR, help="where to write the fold file (default models/kfold)")
    a = sub.add_parser("assemble", help="check the folds and write the soft-label file for --teacher")
    a.add_argument("--out", type=Path, required=True, help="soft-label file to write (.npz)")
    a.add_argument("--dir", type=Path, action="append",
                   help="fold files (default models/kfold); give it again to average one teacher per "
                        "fold from each folder")
    for s in (t, a):
        s.add_argument("--k", type=int, default=4, help="number of folds (default 4)")
        s.add_argument("--data", metavar="DIR", help="data root (default: $FER_DATA, else ../shared/data/fer2013)")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        add_overwrite_flag(s)
    args = p.parse_args(argv)
    if not 2 <= args.k <= 20:
        raise ValueError("--k must be in [2, 20]")
    if args.cmd == "teach":
        from edge_runtime.config import check_threads

        from .threads import tf_threads
        if args.threads is not None:
            check_threads(args.threads, "--threads")
        tf_threads(args.threads)
        claim_file(fold_file(args.k, args.fold, args.dir), writer=WRITER, data=[resolve_root(args.data)], flag="--dir",
                   overwrite=args.overwrite)
        args.dir.mkdir(parents=True, exist_ok=True)
        m = teach(args.k, args.fold, args.data, args.epochs, args.runs, args.dir, not args.quiet, args.fraction)
        print(f"fold {m['fold']} of {m['k']}: teacher validation accuracy {m['teacher']['val_accuracy']:.2%}, "
              f"held-out fold accuracy {m['held_accuracy']:.2%} on {m['faces']:,} faces -> "
              f"{fold_file(args.k, args.fold, args.dir)}")
    else:
        folders = args.dir or [FOLDS_DIR]
        claim_file(args.out, writer=WRITER, inputs=folders, data=[resolve_root(args.data)], flag="--out",
                   overwrite=args.overwrite)
        m = assemble(args.k, args.out, folders, args.data)
        print(f"{m['faces']:,} out-of-fold soft labels from {len(m['teachers'])} teachers "
              f"(accuracy {m['ensemble_train_accuracy']:.2%}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
