import csv
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from edge_runtime.labels import CSV_ORDER, LABELS
from edge_runtime.preprocess import PreprocessSpec
from train.data import DataError, find_layout, load_dataset, load_folder_split, resolve_root

from .conftest import REPO, read_gray


def _write_csv(root, path):
    """fer2013.csv from the tiny tree, rows in the folder listing's order."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for split, usage in (("train", "Training"), ("test", "PublicTest")):
            for lab in LABELS:
                for p in sorted((root / split / lab).iterdir()):
                    px = " ".join(map(str, read_gray(p).ravel()))
                    w.writerow([CSV_ORDER.index(lab), px, usage])


def test_all_layouts_load_the_same_arrays(tiny_tree, tmp_path):
    spec = PreprocessSpec(size=48)
    msambare = tiny_tree("msambare")
    oheix = tiny_tree("oheix", test_name="validation", rename=lambda lab: lab.capitalize())
    csv_path = tmp_path / "fer2013.csv"
    _write_csv(msambare, csv_path)
    a = load_dataset(msambare, spec, progress=False)
    b = load_dataset(oheix, spec, progress=False)
    c = load_dataset(csv_path, spec, progress=False)
    assert (a.layout, b.layout, c.layout) == ("folders", "folders", "csv")
    assert b.test_name == "validation"
    for split in ("train", "val", "test"):
        sa, sb, sc = (getattr(d, split) for d in (a, b, c))
        assert len(sa) > 0
        assert np.array_equal(sa.images, sb.images) and np.array_equal(sa.images, sc.images)
        assert np.array_equal(sa.labels, sb.labels) and np.array_equal(sa.labels, sc.labels)
    assert a.train.images.dtype == np.uint8 and a.train.images.shape[1:] == (48, 48)
    # the validation split is carved from train, stratified, disjoint and seeded
    assert set(a.val.files).isdisjoint(a.train.files)
    assert set(a.val.labels.tolist()) == set(range(7))
    again = load_dataset(msambare, spec, progress=False)
    assert again.val.files == a.val.files
    # --val-fraction 0 (a refit) carves nothing: train is all of train/, the test split is unchanged
    refit = load_dataset(msambare, spec, val_fraction=0, progress=False)
    assert len(refit.val) == 0 and refit.val.images.shape == (0, 48, 48)
    assert sorted(refit.train.files) == sorted(a.train.files + a.val.files)
    assert refit.test.files == a.test.files
    with pytest.raises(DataError, match=r"must be in \[0, 1\)"):
        load_dataset(msambare, spec, val_fraction=1.0, progress=False)


def test_corrupt_and_odd_images(tiny_tree):
    root = tiny_tree()
    (root / "train" / "happy" / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg at all")
    (root / "train" / "sad" / "empty.png").write_bytes(b"")
    whole = sorted((root / "train" / "fear").glob("*.jpg"))[0].read_bytes()
    (root / "train" / "fear" / "half.jpg").write_bytes(whole[: len(whole) // 2])  # a copy cut off half-way
    colour = np.zeros((100, 80, 3), np.uint8)
    colour[..., 2] = 200  # red, 100x80: must be converted to 48x48 gray
    cv2.imwrite(str(root / "train" / "angry" / "colour.png"), colour)
    (root / "train" / "angry" / "notes.txt").write_text("ignored: not an image")
    split = load_folder_split(root / "train", PreprocessSpec(size=48), progress=False)
    skipped = dict(split.skipped)
    assert set(skipped) == {"train/happy/broken.jpg", "train/sad/empty.png", "train/fear/half.jpg"}
    assert "truncated" in skipped["train/fear/half.jpg"]
    assert len(split) == 7 * 6 + 1
    i = split.files.index("train/angry/colour.png")
    assert split.images[i].shape == (48, 48)
    assert int(split.images[i].mean()) == int(round(0.299 * 200))  # OpenCV's BGR->gray weight of red


def test_missing_empty_and_unknown_class_folders(tiny_tree):
    spec = PreprocessSpec(size=48)
    root = tiny_tree()
    for f in (root / "test" / "disgust").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="'disgust' holds no images"):
        load_dataset(root, spec, progress=False)
    (root / "test" / "disgust").rmdir()
    with pytest.raises(DataError, match="missing class folder.*disgust"):
        load_dataset(root, spec, progress=False)
    (root / "train" / "contempt").mkdir()
    with pytest.raises(DataError, match="unknown class folder 'contempt'"):
        load_folder_split(root / "train", spec, progress=False)


def test_cache_makes_the_second_load_fast(tiny_tree, tmp_path):
    root = tiny_tree(per_class=20)
    spec = PreprocessSpec(size=48)
    first = load_folder_split(root / "train", spec, progress=False)
    cached = list((tmp_path / "cache" / "data").glob("*.npz"))  # $FER_EDGE_CACHE/data (edge_runtime/paths.py)
    assert len(cached) == 1
    t0 = time.perf_counter()
    second = load_folder_split(root / "train", spec, progress=False)
    assert time.perf_counter() - t0 < 1.0
    assert np.array_equal(first.images, second.images) and first.files == second.files
    # a changed file invalidates the cache key
    victim = root / "train" / "fear" / sorted(os.listdir(root / "train" / "fear"))[0]
    cv2.imwrite(str(victim), np.full((48, 48), 7, np.uint8))
    third = load_folder_split(root / "train", spec, progress=False)
    assert third.images[third.files.index(str(victim.relative_to(root)))].max() == 7


def test_data_root_resolution(tmp_path, monkeypatch, shared_root):
    monkeypatch.delenv("FER_DATA", raising=False)
    assert resolve_root(None) == shared_root.resolve()
    monkeypatch.setenv("FER_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="FER_DATA path .* does not exist"):
        resolve_root(None)
    with pytest.raises(DataError, match="no train/ folder"):
        find_layout(tmp_path)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "train", "--data", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("python -m train: error:")]
    assert len(lines) == 1 and "does not exist" in lines[0] and "FER2013" in lines[0]
    r = subprocess.run([sys.executable, "-m", "train", "--model", "thesis", "--param", "depth=3"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "no parameter(s) ['depth']" in r.stderr
