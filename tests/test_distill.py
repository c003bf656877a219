"""Knowledge distillation: soft labels from teacher runs (python -m train.distill) and students on them."""
import json
import subprocess
import sys

import numpy as np
import pytest

from edge_runtime.labels import NUM_CLASSES
from edge_runtime.manifest import read_manifest, sha256_file
from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from train.data import DataError, load_dataset
from train.distill import load_soft_labels, soft_targets

from .conftest import REPO, TINY_EXPORT_FRACTION
from .test_train import check_run_folder, train_cli


def test_soft_targets_mix_teacher_and_one_hot_and_reach_the_training_batches(shared_root):
    from train.fit import _datasets
    from train.models import Recipe
    spec = PreprocessSpec(size=48)
    data = load_dataset(shared_root, spec, fraction=0.01, progress=False)
    rng = np.random.default_rng(0)
    teacher = rng.dirichlet(np.ones(NUM_CLASSES), size=len(data.train)).astype(np.float32)
    table = dict(zip(data.train.files, teacher))
    y = soft_targets(data.train, table, 0.7)
    onehot = np.eye(NUM_CLASSES)[data.train.labels]
    np.testing.assert_allclose(y, 0.7 * teacher / teacher.sum(1, keepdims=True) + 0.3 * onehot, atol=1e-6)
    assert np.allclose(y.sum(1), 1, atol=1e-5)

    # the batches the model trains on carry each face's own soft target (no augmentation: faces match exactly)
    ds, _, _ = _datasets(data, spec, Recipe(batch_size=16, augment={}), seed=1, y_train=y)
    x_all = scale_pixels(data.train.images, spec).reshape(len(y), -1)
    xb, yb, wb = next(iter(ds))
    for xi, yi in zip(xb.numpy().reshape(len(xb), -1), yb.numpy()):
        i = int(np.flatnonzero((x_all == xi).all(1))[0])
        np.testing.assert_allclose(yi, y[i], atol=1e-6)

    del table[data.train.files[3]]
    with pytest.raises(DataError, match="no soft labels for 1 of"):
        soft_targets(data.train, table, 0.7)


def test_teacher_settings_are_checked_before_training(tmp_path):
    from train.recipe import TrainConfig
    with pytest.raises(ValueError, match="distill needs soft labels"):
        TrainConfig(model="cbilstm", recipe={"distill": 0.5}).resolved()
    with pytest.raises(ValueError, match="does not exist"):
        TrainConfig(model="cbilstm", teacher=str(tmp_path / "nope.npz")).resolved()
    bad = tmp_path / "bad.npz"
    np.savez(bad, files=np.array(["a.jpg"]), probs=np.ones((1, 3)), meta=np.array("{}"))
    with pytest.raises(DataError, match="not a fer-soft-labels"):
        load_soft_labels(bad)
    ok = TrainConfig(model="cbilstm", teacher=str(bad))
    assert ok.resolved()[1].distill == 0.7  # --teacher alone: the default weight
    with pytest.raises(ValueError, match=r"distill = 1.5 must be in \[0.0, 1.0\]"):
        TrainConfig(model="cbilstm", teacher=str(bad), recipe={"distill": 1.5}).resolved()
    r = subprocess.run([sys.executable, "-m", "train", "--teacher", str(tmp_path / "nope.npz")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("(make it with python -m train.distill)")
    r = subprocess.run([sys.executable, "-m", "train.distill", str(tmp_path), "--out", str(tmp_path / "t.npz")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("python -m train.distill: error: no manifest at") and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.slow
def test_distill_cli_writes_the_teachers_mirror_averaged_probabilities_and_a_student_trains_on_them(
        tmp_path, tiny_run, shared_root):
    soft = tmp_path / "teacher.npz"
    r = subprocess.run([sys.executable, "-m", "train.distill", str(tiny_run), str(tiny_run), "--out", str(soft),
                        "--data", str(shared_root), "--fraction", str(TINY_EXPORT_FRACTION), "--quiet"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    table, meta, sha = load_soft_labels(soft)
    m = read_manifest(tiny_run).to_dict()
    assert [t["model_sha256"] for t in meta["teachers"]] == [m["model_sha256"]] * 2
    assert meta["teachers"][0]["val_accuracy"] == m["metrics"]["val_accuracy"]

    # every face of train/ (the student's validation faces too: a refit student needs them), and the
    # values are the teacher's own probabilities averaged over the face and its mirror image
    spec = PreprocessSpec.from_dict(m["preprocessing"])
    faces = load_dataset(shared_root, spec, val_fraction=0, fraction=TINY_EXPORT_FRACTION, progress=False).train
    assert sorted(table) == sorted(faces.files) and meta["faces"] == len(faces)
    import keras
    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    x = scale_pixels(faces.images[:16], spec)
    expect = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    got = np.stack([table[f] for f in faces.files[:16]])
    np.testing.assert_allclose(got, expect, atol=2e-3)  # float16 storage
    assert meta["ensemble_train_accuracy"] == pytest.approx(
        np.mean(np.stack([table[f] for f in faces.files]).argmax(1) == faces.labels), abs=1e-4)

    out = tmp_path / "student"
    r = train_cli(shared_root, out, "--epochs", "1", "--teacher", str(soft))
    assert "distilled from 2 teacher(s)" in r.stdout
    check_run_folder(out, "cbilstm", shared_root, 0.03)
    s = read_manifest(out).to_dict()
    assert s["recipe"]["distill"] == 0.7 and s["teacher"]["weight"] == 0.7
    assert s["teacher"]["sha256"] == sha == sha256_file(soft)
    assert json.loads(json.dumps(s["teacher"]["teachers"])) == meta["teachers"]
    assert read_manifest(tiny_run).teacher is None  # undistilled runs say so
