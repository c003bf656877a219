"""BatchNorm re-estimation on clean faces: the statistics it sets, what it leaves alone, and the CLI
that applies it to an existing run."""
import subprocess
import sys

import numpy as np
import pytest

from edge_runtime.manifest import read_manifest, sha256_file
from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from train.data import load_dataset

from .conftest import REPO, TINY_EXPORT_FRACTION


def _bn_stats(model):
    from train.batchnorm import batchnorm_layers
    return [(b.moving_mean.numpy().copy(), b.moving_variance.numpy().copy()) for b in batchnorm_layers(model)]


def test_recalibration_sets_the_clean_faces_statistics_and_leaves_everything_else(shared_root):
    import keras
    from train.batchnorm import batchnorm_layers, recalibrate_batchnorm
    from train.models import build

    spec = PreprocessSpec(size=48)
    train = load_dataset(shared_root, spec, fraction=0.03, progress=False).train
    x = scale_pixels(train.images, spec)  # sorted by class, as loaded
    assert np.all(np.diff(train.labels) >= 0)
    keras.utils.set_random_seed(0)
    model = build("cbilstm")
    trainable = [w.numpy().copy() for w in model.trainable_weights]
    drops = {layer.name: layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)}

    assert recalibrate_batchnorm(model, x, batch_size=64) == 7
    # the first BatchNorm's input does not depend on any other: its statistics are exactly the clean
    # faces' (the mean exactly; the variance up to the within-batch estimate, a 1/64 bias)
    conv1 = keras.Model(model.inputs, model.get_layer("c1_conv").output).predict(x, verbose=0)
    bn1 = model.get_layer("c1_bn")
    np.testing.assert_allclose(bn1.moving_mean.numpy(), conv1.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), conv1.var(axis=(0, 1, 2)), rtol=0.05)
    stats = _bn_stats(model)
    assert all(not np.allclose(v, 1.0) for _, v in stats)  # every layer moved off its initial (0, 1)
    # weights, dropout and momentum as they were; a second pass gives the same statistics
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(trainable, model.trainable_weights))
    assert {layer.name: layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)} == drops
    assert {b.momentum for b in batchnorm_layers(model)} == {0.99}
    recalibrate_batchnorm(model, x, batch_size=64)
    for (m1, v1), (m2, v2) in zip(stats, _bn_stats(model)):
        np.testing.assert_allclose(m1, m2, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(v1, v2, rtol=1e-4, atol=1e-6)
    assert recalibrate_batchnorm(build("thesis"), np.zeros((4, 32, 32, 1), np.float32)) == 0


def _recalibrate_cli(*args):
    return subprocess.run([sys.executable, "-m", "train.recalibrate", *map(str, args), "--quiet"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_recalibrate_cli_writes_a_scored_run_from_an_existing_one(tiny_run, tmp_path, shared_root, tiny_tree):
    import keras
    from train.batchnorm import recalibrate_batchnorm

    out = tmp_path / "bn"
    r = _recalibrate_cli(tiny_run, "--out", out, "--data", shared_root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "re-estimated 7 BatchNorm layers" in r.stdout and "test accuracy" in r.stdout
    src, m = read_manifest(tiny_run).to_dict(), read_manifest(out).to_dict()
    assert m["recalibrated_from"]["model_sha256"] == src["model_sha256"]
    assert m["model_sha256"] == sha256_file(out / "model.keras")
    assert m["recipe"]["bn_recalibration"] and m["data"]["files_hash"] == src["data"]["files_hash"]
    fit_seconds = src["train_seconds"] - src["bn_recalibration"]["seconds"]  # the tiny run re-estimated already
    assert m["train_seconds"] == pytest.approx(fit_seconds + m["bn_recalibration"]["seconds"], abs=0.11)
    assert m["metrics"]["val_accuracy"] == src["metrics"]["val_accuracy"]  # the checkpoint's, from training
    for f in ("history.csv", "samples.png", "confusion_matrix.png", "saliency.png", "classification_report.json"):
        assert (out / f).is_file(), f

    # the new model = the source's weights with its BatchNorm re-estimated on the run's own train split
    spec = PreprocessSpec.from_dict(src["preprocessing"])
    train = load_dataset(shared_root, spec, src["data"]["val_fraction"], src["seed"], TINY_EXPORT_FRACTION,
                         progress=False).train
    expected = keras.models.load_model(tiny_run / "model.keras")
    recalibrate_batchnorm(expected, scale_pixels(train.images, spec))
    got = keras.models.load_model(out / "model.keras")
    for a, b in zip(expected.trainable_weights, got.trainable_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for (m1, v1), (m2, v2) in zip(_bn_stats(expected), _bn_stats(got)):
        np.testing.assert_allclose(m1, m2, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(v1, v2, rtol=1e-4, atol=1e-6)

    # bad input: one line, exit 2, nothing written
    for args, msg in (((tiny_run, "--out", tiny_run), "is this command's input"),
                      ((tiny_run, "--out", tmp_path / "x", "--data", tiny_tree()), "differ from the data"),
                      ((tmp_path / "missing", "--out", tmp_path / "y"), "error:")):
        r = _recalibrate_cli(*args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
