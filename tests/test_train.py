import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from edge_runtime.manifest import read_manifest, sha256_file
from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from train.data import load_dataset
from train.fit import class_weights

from .conftest import REPO

RUN_FILES = ["model.keras", "manifest.json", "history.csv", "data_report.json", "classification_report.txt",
             "classification_report.json", "class_distribution.png", "samples.png", "curves.png",
             "confusion_matrix.png", "per_class_error.png", "saliency.png"]


def train_cli(shared_root, out, *args) -> subprocess.CompletedProcess:
    """python -m train on 3 % of the shared data, quietly; it must succeed."""
    r = subprocess.run([sys.executable, "-m", "train", "--data", str(shared_root), "--fraction", "0.03",
                        "--out", str(out), "--quiet", *args],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.slow
def test_thesis_one_epoch_writes_a_complete_run_folder_that_reloads(tmp_path, shared_root):
    out = tmp_path / "run"
    train_cli(shared_root, out, "--model", "thesis", "--epochs", "1")
    check_run_folder(out, "thesis", shared_root, 0.03)


@pytest.mark.slow
def test_cbilstm_run_folder_reloads(tiny_run, shared_root):
    """The session's tiny cbilstm run (python -m train, 1 epoch on 3 %), checked the same way."""
    from .conftest import TINY_EXPORT_FRACTION
    check_run_folder(tiny_run, "cbilstm", shared_root, TINY_EXPORT_FRACTION)


@pytest.mark.slow
def test_refit_trains_on_all_of_train_for_the_given_epochs(tmp_path, shared_root):
    """--val-fraction 0: no carved split, no checkpoint or early stopping; the last epoch's (EMA) weights."""
    out = tmp_path / "refit"
    r = train_cli(shared_root, out, "--epochs", "2", "--val-fraction", "0")
    assert "refit, no validation (2 epochs)" in r.stdout
    check_run_folder(out, "cbilstm", shared_root, 0.03, epochs=2, refit=True)
    m = read_manifest(out).to_dict()
    assert m["recipe"]["ema"] > 0  # the default recipe: the saved weights are the EMA's (see the EMA test)
    carved = load_dataset(shared_root, PreprocessSpec.from_dict(m["preprocessing"]), fraction=0.03, progress=False)
    assert m["data"]["sizes"]["train"] == len(carved.train) + len(carved.val)
    assert not (out / ".best.keras").exists()
    from train.recipe import TrainConfig
    with pytest.raises(ValueError, match="needs a validation split"):
        TrainConfig(model="cbilstm", recipe={"schedule": "plateau"}, val_fraction=0).resolved()


def check_run_folder(out, model, shared_root, fraction, epochs=1, refit=False):
    for f in RUN_FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    m = read_manifest(out).to_dict()
    assert m["model"] == model and m["kind"] == "run"
    assert m["model_sha256"] == sha256_file(out / "model.keras")
    assert (m["data"]["sizes"]["val"] == 0) == refit and m["data"]["files_hash"]["test"]
    assert m["metrics"]["epochs_run"] == epochs
    assert (m["metrics"]["val_accuracy"] is None) == refit
    assert m["precision"] in ("float32", "mixed_bfloat16")
    assert m["init_seed"] == m["seed"]  # no --init-seed: one seed for split, init and augmentation
    assert 0.0 <= m["metrics"]["test"]["accuracy"] <= 1.0
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == epochs and {"loss", "lr"} <= set(rows[0])
    assert ({"val_accuracy", "val_top_class_share"} <= set(rows[0])) != refit
    if refit:
        assert m["metrics"]["best_epoch"] == epochs and not any(k.startswith("val_") for k in rows[0])
    bn = m["bn_recalibration"]  # cbilstm's recipe re-estimates BatchNorm on the clean training faces
    if model == "thesis":
        assert bn is None  # no BatchNorm layers
    else:
        assert bn["layers"] == 7 and bn["faces"] == m["data"]["sizes"]["train"]
        assert (bn["val_accuracy_before"] is None) == refit and (bn["val_accuracy_after"] is None) == refit
        assert m["train_seconds"] >= bn["seconds"] > 0
    report = json.loads((out / "classification_report.json").read_text())
    assert {"angry", "disgust", "macro avg", "weighted avg"} <= set(report)
    assert abs(report["accuracy"] - m["metrics"]["test"]["accuracy"]) < 1e-9

    # reload and predict the same probabilities as the run's own evaluation
    import keras
    spec = PreprocessSpec.from_dict(m["preprocessing"])
    data = load_dataset(shared_root, spec, fraction=fraction, progress=False)
    x = scale_pixels(data.test.images[:32], spec)
    saved = keras.models.load_model(out / "model.keras")
    # whatever precision it trained in, the saved model computes in float32 (exporters rely on it)
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    a = saved.predict(x, verbose=0)
    b = keras.models.load_model(out / "model.keras").predict(x, verbose=0)
    assert a.shape == (32, 7) and np.allclose(a.sum(1), 1, atol=1e-4)
    assert np.array_equal(a, b)
    acc = float(np.mean(keras.models.load_model(out / "model.keras").predict(
        scale_pixels(data.test.images, spec), verbose=0).argmax(1) == data.test.labels))
    assert acc == pytest.approx(m["metrics"]["test"]["accuracy"], abs=1e-9)


def test_class_weights():
    y = np.array([0] * 90 + [1] * 10)
    assert np.allclose(class_weights(y, "none"), 1)
    w = class_weights(y, "balanced")
    assert w[1] / w[0] == pytest.approx(9.0) and w[y].mean() == pytest.approx(1.0)
    s = class_weights(y, "sqrt")
    assert s[1] / s[0] == pytest.approx(3.0)
    with pytest.raises(ValueError):
        class_weights(y, "bogus")


def test_precision_and_ema_settings_are_checked_before_training():
    from train.recipe import TrainConfig, cpu_has_native_bf16, resolve_precision
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("auto") == ("mixed_bfloat16" if cpu_has_native_bf16() else "float32")
    with pytest.raises(ValueError, match="precision = 'fp16' must be one of float32, mixed_bfloat16, auto"):
        TrainConfig(model="cbilstm", recipe={"precision": "fp16"}).resolved()
    with pytest.raises(ValueError, match=r"ema = 1.0 must be in \[0.0, 1.0\)"):
        TrainConfig(model="cbilstm", recipe={"ema": 1.0}).resolved()
    with pytest.raises(ValueError, match=r"mixup = -0.2 must be in \[0.0, inf\]"):
        TrainConfig(model="cbilstm", recipe={"mixup": -0.2}).resolved()
    r = subprocess.run([sys.executable, "-m", "train", "--set", "precision=half", "--out", "unused"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("python -m train: error: precision = 'half' must be one of")


def test_weight_ema_warms_up_and_top_class_share_counts_predictions():
    import keras

    from train.optimize import make_optimizer, top_class_share
    from train.models import Recipe
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=make_optimizer(Recipe(lr=0.1, weight_decay=1e-4, ema=0.99), 10), loss="mse")
    x, y = np.ones((4, 3), np.float32), np.full((4, 1), 5.0, np.float32)
    kernel = model.layers[0].kernel
    expected = kernel.numpy()  # the average starts from the initial weights
    for t in range(30):
        model.train_on_batch(x, y)
        m = min(0.99, (1 + t) / (10 + t))  # tf.train.ExponentialMovingAverage's warm-up
        expected = m * expected + (1 - m) * kernel.numpy()
    average = model.optimizer._model_variables_moving_average[0].numpy()
    assert np.allclose(average, expected, atol=1e-5)
    assert not np.allclose(average, kernel.numpy(), atol=1e-3)  # it is an average, not a copy
    # fit() ends by writing the average into the weights: a refit (--val-fraction 0) saves exactly that
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.array_equal(kernel.numpy(), model.optimizer._model_variables_moving_average[0].numpy())

    share = top_class_share()
    probs = np.eye(7, dtype=np.float32)[[0, 0, 0, 3, 5]]
    share.update_state(probs, probs)
    assert float(share.result()) == pytest.approx(0.6)
    share.reset_state()
    share.update_state(probs[3:], probs[3:])
    assert float(share.result()) == pytest.approx(0.5)


def test_mixup_blends_each_sample_with_its_mirror_and_keeps_the_larger_share(shared_root):
    import tensorflow as tf

    from train.augment import augment_batch, mixup_batch, mixup_lambda
    data = load_dataset(shared_root, PreprocessSpec(size=48), 0.1, 0, fraction=0.01, progress=False)
    x = tf.constant(scale_pixels(data.train.images[:32], PreprocessSpec(size=48)))
    y = tf.constant(np.eye(7, dtype=np.float32)[data.train.labels[:32]])
    w = tf.constant(class_weights(data.train.labels, "sqrt").astype(np.float32)[data.train.labels[:32]])
    seed = tf.constant(5, tf.int64)
    xm, ym, wm = (t.numpy() for t in mixup_batch(x, y, w, seed, 0.4))
    lam = mixup_lambda(seed, 32, 0.4).numpy()
    assert ((lam >= 0.5) & (lam <= 1.0)).all() and lam.std() > 0.05  # drawn per sample, folded to >= 0.5
    for got, src in ((xm, x.numpy()), (ym, y.numpy()), (wm, w.numpy())):
        ref = lam.reshape([-1] + [1] * (src.ndim - 1))
        assert np.allclose(got, ref * src + (1 - ref) * src[::-1], atol=1e-6)
    assert np.allclose(ym.sum(1), 1.0) and (ym.argmax(1) == y.numpy().argmax(1)).all()
    again = mixup_batch(x, y, w, seed, 0.4)[0].numpy()
    assert np.array_equal(again, xm)  # same seed, same batch
    assert not np.allclose(mixup_batch(x, y, w, tf.constant(6, tf.int64), 0.4)[0].numpy(), xm)
    # Augmentation is seeded the same way: flips only, the mirror image or the image itself.
    flipped = augment_batch(x, seed, {"flip": True}).numpy()
    same = [np.allclose(f, o, atol=1e-5) for f, o in zip(flipped, x.numpy())]
    mirrored = [np.allclose(f, o[:, ::-1], atol=1e-5) for f, o in zip(flipped, x.numpy())]
    assert all(s or m for s, m in zip(same, mirrored)) and 0 < sum(mirrored) < 32


def test_weight_decay_shrinks_kernels_and_spares_biases_and_batchnorm():
    import keras
    from keras import ops

    from train.optimize import make_optimizer
    from train.models import Recipe
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, bias_initializer="ones"),
                              keras.layers.BatchNormalization(beta_initializer="ones")])
    # A loss with zero gradient: whatever moves is weight decay alone.
    model.compile(optimizer=make_optimizer(Recipe(lr=0.1, weight_decay=0.5), 10), loss=lambda y, p: 0.0 * ops.sum(p))
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    for _ in range(5):
        model.train_on_batch(np.ones((8, 3), np.float32), np.zeros((8, 4), np.float32))
    after = {v.path: v.numpy() for v in model.trainable_variables}
    kernel = next(k for k in after if k.endswith("kernel"))
    assert np.allclose(after[kernel], before[kernel] * (1 - 0.1 * 0.5) ** 5, rtol=1e-5)
    spared = [k for k in after if k != kernel]
    assert sorted(k.rsplit("/", 1)[1] for k in spared) == ["beta", "bias", "gamma"]
    for k in spared:
        assert np.array_equal(after[k], before[k]), k


def test_help_and_argument_checks_do_not_load_tensorflow():
    code = ("import sys, train.__main__ as t, train.grid as g; t.build_parser(); g.build_parser(); "
            "from train.fit import TrainConfig; TrainConfig(model='cbilstm').resolved(); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_init_seed_reaches_the_config_and_leaves_the_split_seed():
    from train.__main__ import build_parser, config_from_args
    cfg = config_from_args(build_parser().parse_args(["--init-seed", "7"]))
    assert (cfg.seed, cfg.init_seed) == (1337, 7)
    assert config_from_args(build_parser().parse_args([])).init_seed is None


def test_thesis_architecture_is_the_thesis():
    from train.models import build
    m = build("thesis")
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds == ["InputLayer", "Reshape", "Bidirectional", "LSTM", "LSTM", "LSTM", "LSTM", "LSTM",
                     "Dense", "Dense", "Dense"]
    assert m.input_shape == (None, 32, 32, 1) and m.output_shape == (None, 7)
    assert m.get_layer("bilstm").forward_layer.units == 32 and m.get_layer("lstm_col").units == 64
    x = np.random.default_rng(0).random((2, 32, 32, 1), np.float32)
    # unroll=True (the export form) computes the same function with the same weights
    u = build("thesis", unroll=True)
    u.set_weights(m.get_weights())
    assert np.allclose(m.predict(x, verbose=0), u.predict(x, verbose=0), atol=1e-5)


def test_cbilstm_stem_spec_gives_the_documented_shapes():
    from train.models import build, parse_stem
    assert parse_stem("16-32s-p-64") == [("conv", 16), ("conv_s2", 32), ("pool", 0), ("conv", 64)]
    assert parse_stem("16-p-32-e") == [("conv", 16), ("pool", 0), ("conv", 32), ("se", 0)]
    assert parse_stem("16-d32s-d64") == [("conv", 16), ("sep_s2", 32), ("sep", 64)]
    for bad in ("16-x-32", "0-32", "16--32", "s", "d", "d0", "dd32"):
        with pytest.raises(ValueError, match="bad stem token"):
            parse_stem(bad)
    m = build("cbilstm")  # 48 -> 24 (stride 2) -> 12 -> 6: six rows of 6 x 128 features
    assert m.get_layer("rows").output.shape[1:] == (6, 768)
    assert m.input_shape == (None, 48, 48, 1) and m.output_shape == (None, 7)
    sep = build("cbilstm", {"stem": "16-d32s-d64-p-d128-p-d128"})  # depthwise-separable: same rows
    assert sep.get_layer("rows").output.shape[1:] == (6, 768) and sep.get_layer("d2_dw").strides == (2, 2)
    wide = build("cbilstm-wide")  # the first default: full-resolution stem, 12 rows
    assert wide.get_layer("rows").output.shape[1:] == (12, 1536)
    r = subprocess.run([sys.executable, "-m", "train", "--param", "stem=16-x-32", "--out", "unused"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("python -m train: error: bad stem token 'x'")
    x = np.random.default_rng(0).random((2, 48, 48, 1), np.float32)
    u = build("cbilstm", unroll=True)
    u.set_weights(m.get_weights())
    assert np.allclose(m.predict(x, verbose=0), u.predict(x, verbose=0), atol=1e-5)
    # 'e': squeeze-excitation scales each channel of the features by a gate in (0, 1)
    import keras
    se = build("cbilstm", {"stem": "8-p-16-e"})
    feats = keras.Model(se.input, [se.get_layer("c3_relu").output, se.get_layer("se4_gate").output,
                                   se.get_layer("se4_excite").output]).predict(x, verbose=0)
    assert feats[1].shape == (2, 1, 1, 16) and ((feats[1] > 0) & (feats[1] < 1)).all()
    assert np.allclose(feats[2], feats[0] * feats[1], atol=1e-6)
    # 'rN': a separable block added to its input, so it must keep the width of the block before it
    assert parse_stem("16s-d48-p-r48-r48") == [("conv_s2", 16), ("sep", 48), ("pool", 0), ("res", 48), ("res", 48)]
    for bad in ("r16", "16-r32", "16-p-e-r8"):
        with pytest.raises(ValueError, match="residual block"):
            parse_stem(bad)
    res = build("cbilstm", {"stem": "8-r8"})
    parts = keras.Model(res.input, [res.get_layer("c1_relu").output, res.get_layer("r2_pw_bn").output,
                                    res.get_layer("r2_relu").output]).predict(x, verbose=0)
    assert np.allclose(parts[2], np.maximum(parts[0] + parts[1], 0), atol=1e-5)


def test_macro_f1_is_scikit_learns_with_every_class_counted():
    """One numpy definition serves the reports, the export gate and the benchmarks: it must equal
    f1_score(average="macro", labels=range(7), zero_division=0), absent classes included."""
    from sklearn.metrics import f1_score

    from train.scores import macro_f1
    rng = np.random.default_rng(0)
    for trial in range(20):
        y_true = rng.integers(0, 7 if trial % 2 else 4, 300)  # odd trials: a class or three never occur
        y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 7, 300))
        want = f1_score(y_true, y_pred, average="macro", labels=range(7), zero_division=0)
        assert abs(macro_f1(y_true, y_pred) - want) < 1e-12
