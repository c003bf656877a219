"""Out-of-fold soft labels (train/kfold.py): folds are stratified and disjoint, each teacher never
trains on the fold it labels nor on the validation split, and the assembled file covers the
training split exactly once and feeds python -m train --teacher. Real data, real training."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edge_runtime.manifest import read_manifest
from edge_runtime.preprocess import PreprocessSpec
from train.data import DataError, load_dataset
from train.distill import load_soft_labels, write_labels
from train.kfold import assemble, fold_file, fold_of, read_fold

from .conftest import REPO, TINY_EXPORT_FRACTION


def test_folds_are_stratified_and_reproducible():
    labels = np.repeat(np.arange(7), [400, 44, 410, 720, 500, 480, 317])
    f = fold_of(labels, 4)
    assert (f == fold_of(labels, 4)).all() and set(f) == {0, 1, 2, 3}
    for c in range(7):  # each class spread evenly over the folds
        counts = np.bincount(f[labels == c], minlength=4)
        assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError):
        fold_of(labels, 1)


@pytest.mark.slow
def test_two_teachers_label_their_held_out_folds_and_assemble_covers_the_split_once(shared_root, tmp_path):
    runs, folds = tmp_path / "runs", tmp_path / "folds"
    for fold in (0, 1):
        r = subprocess.run([sys.executable, "-m", "train.kfold", "teach", "--k", "2", "--fold", str(fold),
                            "--epochs", "1", "--fraction", str(TINY_EXPORT_FRACTION), "--data", str(shared_root),
                            "--runs", str(runs), "--dir", str(folds), "--quiet"],
                           capture_output=True, text=True, cwd=REPO, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        m = read_manifest(runs / f"k2-fold{fold}")
        assert m.holdout == {"k": 2, "fold": fold, "fold_seed": 0}
    data = load_dataset(shared_root, PreprocessSpec(), fraction=TINY_EXPORT_FRACTION, progress=False)
    f0, _, p0, meta0 = read_fold(fold_file(2, 0, folds))
    f1, _, _, _ = read_fold(fold_file(2, 1, folds))
    held0 = set(np.array(data.train.files)[fold_of(data.train.labels, 2) == 0])
    assert set(f0) == held0 and not set(f0) & set(f1) and not (set(f0) | set(f1)) & set(data.val.files)
    # teacher 0 trained on fold 1 only: its run's training split is the other fold
    assert read_manifest(runs / "k2-fold0").data["sizes"]["train"] == len(f1)
    assert p0.dtype == np.float32 and np.allclose(p0.sum(1), 1, atol=0.01)
    assert meta0["teacher"]["model_sha256"] == read_manifest(runs / "k2-fold0").model_sha256

    out = tmp_path / "soft.npz"
    r = subprocess.run([sys.executable, "-m", "train.kfold", "assemble", "--k", "2", "--dir", str(folds),
                        "--out", str(out), "--data", str(shared_root)], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    table, meta, _ = load_soft_labels(out)  # the format python -m train --teacher reads
    assert set(table) == set(data.train.files) and meta["out_of_fold"]["k"] == 2
    assert [t["fold"] for t in meta["teachers"]] == [0, 1]

    # a second teacher per fold (here: the first's labels, sharpened) is averaged in, face by face
    folds2 = tmp_path / "folds2"
    for fold in (0, 1):
        files, labels, probs, meta = read_fold(fold_file(2, fold, folds))
        write_labels(fold_file(2, fold, folds2), files, labels, np.eye(7)[probs.argmax(1)], meta)
    both = tmp_path / "both.npz"
    meta2 = assemble(2, both, [folds, folds2], shared_root)
    table2, _, _ = load_soft_labels(both)
    assert meta2["out_of_fold"]["teachers_per_fold"] == 2 and len(meta2["teachers"]) == 4
    assert np.allclose(table2[f0[0]], (p0[0] + np.eye(7)[p0[0].argmax()]) / 2, atol=2e-3)
    files, labels, probs, meta = read_fold(fold_file(2, 1, folds2))
    write_labels(fold_file(2, 1, folds2), files[1:], labels[1:], probs[1:], meta)  # one face short
    with pytest.raises(DataError, match="other faces"):
        assemble(2, tmp_path / "bad.npz", [folds, folds2], shared_root)

    shutil.copy(fold_file(2, 0, folds), fold_file(2, 1, folds))  # fold 0 twice, fold 1 missing
    with pytest.raises(DataError, match="not 1 of 2|overlap"):
        assemble(2, tmp_path / "bad.npz", folds, shared_root)
    assert not (tmp_path / "bad.npz").exists()
