"""Fit a registered model on a Dataset and write a complete run folder.

Run folder: model.keras, manifest.json, history.csv, data_report.json, classification_report.*,
class_distribution.png, samples.png, curves.png, confusion_matrix.png, per_class_error.png,
saliency.png.
"""
from __future__ import annotations

import csv
import io
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.labels import LABELS, NUM_CLASSES
from edge_runtime.manifest import (SCHEMA_VERSION, Manifest, atomic_write_json, atomic_write_text, sha256_file,
                                   write_manifest)
from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from edge_runtime.versions import package_versions

from . import reports
from .scores import metrics
from .data import Dataset, fold_of, load_dataset
from .models import DISTILL_WEIGHT, Recipe, build, get_entry, parse_stem


@dataclass
class TrainConfig:
    model: str
    params: dict = field(default_factory=dict)  # architecture overrides
    recipe: dict = field(default_factory=dict)  # Recipe overrides
    seed: int = 1337  # the validation split, and by default everything random in training
    init_seed: int | None = None  # weights, shuffling and augmentation only (None: seed); same split
    val_fraction: float = 0.1  # 0: refit on all of train/ for the recipe's epochs (no validation)
    fraction: float = 1.0
    progress: bool = True
    saliency_per_class: int = 2  # correct and wrong examples per class in saliency.png
    teacher: str | None = None  # soft-label file from python -m train.distill (knowledge distillation)
    init: str | None = None  # a run folder of the same model and params whose weights training starts from
    holdout: tuple | None = None  # (k, fold, fold_seed): train without that fold of the training split (train/kfold.py)

    @property
    def weights_seed(self) -> int:
        """The seed for init, shuffling and augmentation."""
        return self.seed if self.init_seed is None else int(self.init_seed)

    def resolved(self) -> tuple[dict, Recipe, PreprocessSpec]:
        entry = get_entry(self.model)
        unknown = set(self.params) - set(entry.params)
        if unknown:
            raise ValueError(f"model {self.model!r} has no parameter(s) {sorted(unknown)}; "
                             f"it takes {sorted(entry.params)}")
        params = {**entry.params, **self.params}
        unknown = set(self.recipe) - set(Recipe.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        recipe = replace(entry.recipe, **self.recipe)
        recipe = check_recipe_numbers(recipe)
        if not 0.0 <= float(self.val_fraction) <= 0.5 or not 0.0 < float(self.fraction) <= 1.0:
            raise ValueError(f"--val-fraction must be in [0, 0.5] and --fraction in (0, 1], "
                             f"not {self.val_fraction!r} / {self.fraction!r}")
        resolve_precision(recipe.precision)
        if not 0.0 <= float(recipe.ema) < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0 = off), not {recipe.ema!r}")
        if not float(recipe.mixup) >= 0.0:
            raise ValueError(f"mixup must be an alpha >= 0 (0 = off), not {recipe.mixup!r}")
        if not float(recipe.time_budget_min) >= 0.0:
            raise ValueError(f"the time budget must be minutes >= 0 (0 = off), not {recipe.time_budget_min!r}")
        if not 0.0 <= float(recipe.reframe) <= 1.0:
            raise ValueError(f"reframe must be a share in [0, 1] (0 = off), not {recipe.reframe!r}")
        if not 0.0 <= float(recipe.distill) <= 1.0:
            raise ValueError(f"distill must be a weight in [0, 1], not {recipe.distill!r}")
        if self.teacher and not Path(self.teacher).is_file():
            raise ValueError(f"--teacher {self.teacher} does not exist (make it with python -m train.distill)")
        if self.teacher and not recipe.distill:
            recipe = replace(recipe, distill=DISTILL_WEIGHT)
        if recipe.distill and not self.teacher:
            raise ValueError("distill needs soft labels: pass --teacher FILE (from python -m train.distill)")
        if not self.val_fraction and recipe.schedule == "plateau":
            raise ValueError("schedule=plateau needs a validation split: use schedule=cosine with --val-fraction 0")
        if "stem" in params:
            parse_stem(params["stem"])  # a bad stem spec fails here, before the data is loaded
        if self.init:
            init_run(self.init, self.model, params)
        spec = replace(entry.preprocessing, size=int(params.get("size", entry.preprocessing.size)))
        return params, recipe, spec


# Every number of a recipe, bounded (NaN and inf fail too): (type, low, high), inclusive.
RECIPE_BOUNDS = {"epochs": (int, 1, 10_000), "batch_size": (int, 1, 65_536), "lr": (float, 1e-8, 10.0),
                 "label_smoothing": (float, 0.0, 0.99), "weight_decay": (float, 0.0, 1.0),
                 "patience": (int, 1, 10_000), "time_budget_min": (float, 0.0, 100_000.0)}


FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "patience": "--patience",
         "time_budget_min": "--time, minutes"}


def check_recipe_numbers(recipe: Recipe) -> Recipe:
    """The recipe with every number checked against RECIPE_BOUNDS (integers as int: 10.0 -> 10)."""
    ints = {}
    for key, (kind, lo, hi) in RECIPE_BOUNDS.items():
        v = getattr(recipe, key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer())
        if not ok or not lo <= float(v) <= hi:  # also refuses NaN and inf
            name = f"{key} ({FLAGS[key]})" if key in FLAGS else key
            raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'} in [{lo:g}, {hi:g}], "
                             f"not {v!r}")
        if kind is int:
            ints[key] = int(v)
    return replace(recipe, **ints)


PRECISIONS = ("float32", "mixed_bfloat16", "auto")


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls/convs run in hardware (x86 AVX512-BF16 or AMX; Arm BF16)."""
    from edge_runtime.cpu import has_native_bf16
    return has_native_bf16()


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy to train with. 'auto' picks bf16 only where it is native: emulated bf16
    is slower than float32. Measured here (AMD EPYC, AVX512-BF16): a cbilstm epoch takes ~20 % less time."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "mixed_bfloat16" if cpu_has_native_bf16() else "float32"
    return precision


@contextmanager
def dtype_policy(precision: str):
    """Build models under a resolved Keras dtype policy; the process-wide policy is float32 again
    afterwards (several models are built in one process: tests, benchmarks.cost)."""
    import keras
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights, mean 1 over the training samples. 'sqrt' halves the imbalance in log scale."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    if mode == "none":
        return np.ones(NUM_CLASSES)
    base = counts.sum() / (NUM_CLASSES * np.maximum(counts, 1))
    w = {"balanced": base, "sqrt": np.sqrt(base)}.get(mode)
    if w is None:
        raise ValueError(f"class_weight must be none, sqrt or balanced, not {mode!r}")
    return w / (w[labels].mean())


def init_run(run_dir, model: str, params: dict) -> Path:
    """The model file of a run to start from, checked: same model and params, sha256 as recorded."""
    from edge_runtime.manifest import ManifestError, read_manifest, verify_file
    try:
        m = read_manifest(run_dir)
        if m.kind != "run" or m.model != model or m.params != params:
            raise ValueError(f"--init {run_dir} is not a {model} run with these parameters")
        path = Path(run_dir) / m.model_file
        verify_file(path, m.model_sha256)
    except ManifestError as e:
        raise ValueError(f"--init {run_dir}: {e}") from None
    return path


def _datasets(data: Dataset, spec: PreprocessSpec, recipe: Recipe, seed: int, y_train: np.ndarray | None = None,
              x_device: np.ndarray | None = None, skip_epochs: int = 0):
    """(train, val, steps per epoch); ``y_train`` replaces the one-hot targets (distillation);
    ``x_device``: the training faces in the device's framing, shown instead with odds ``recipe.reframe``;
    ``skip_epochs``: start where an unbroken run would be after that many epochs (a resumed run)."""
    import tensorflow as tf
    from .augment import augment_batch, check_config, mixup_batch

    aug = check_config(dict(recipe.augment))
    x_train = scale_pixels(data.train.images, spec)  # the runtime's own transform, bit for bit
    if y_train is None:
        y_train = np.eye(NUM_CLASSES, dtype=np.float32)[data.train.labels]
    w_train = class_weights(data.train.labels, recipe.class_weight).astype(np.float32)[data.train.labels]
    share = float(recipe.reframe) if x_device is not None else 0.0
    slices = (x_train, y_train, w_train) + ((scale_pixels(x_device, spec),) if share else ())
    ds = tf.data.Dataset.from_tensor_slices(slices)
    ds = ds.shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(recipe.batch_size, drop_remainder=True)
    steps = max(1, len(x_train) // recipe.batch_size)
    skip = skip_epochs * steps  # batches already seen: shuffling and per-batch seeds are deterministic
    ds = ds.skip(skip)
    alpha = float(recipe.mixup)

    def perturb(batch, s):
        x, y, w = batch[:3]
        if share:
            pick = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seed=tf.stack([s, tf.constant(31, tf.int64)]))
            x = tf.where(pick < share, batch[3], x)
        if aug:
            x = augment_batch(x, s, aug)
        if alpha:
            x, y, w = mixup_batch(x, y, w, s, alpha)
        return x, y, w

    if aug or alpha or share:
        seeds = tf.data.Dataset.random(seed=seed).skip(skip)
        ds = tf.data.Dataset.zip((ds, seeds)).map(perturb, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    val = None
    if len(data.val):
        x_val = scale_pixels(data.val.images, spec)
        y_val = np.eye(NUM_CLASSES, dtype=np.float32)[data.val.labels]
        val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(256)
    return ds, val, steps


NO_DECAY = ("bias", "gamma", "beta")  # Keras variable names kept out of weight decay


COSINE_ALPHA = 0.01  # the cosine schedule's floor, as a share of the peak learning rate


def _warmup_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    return min(2 * steps_per_epoch, recipe.epochs * steps_per_epoch // 5)


def _optimizer(recipe: Recipe, steps_per_epoch: int, schedule=None):
    """``schedule``: a learning-rate schedule to use instead of the recipe's (a time budget's)."""
    import keras
    lr = recipe.lr
    if schedule is not None:
        lr = schedule
    elif recipe.schedule == "cosine":
        warm = _warmup_steps(recipe, steps_per_epoch)
        total = max(1, recipe.epochs * steps_per_epoch - warm)
        lr = keras.optimizers.schedules.CosineDecay(recipe.lr / 10, total, alpha=COSINE_ALPHA,
                                                   warmup_target=recipe.lr, warmup_steps=warm)
    if recipe.schedule not in ("plateau", "cosine"):
        raise ValueError(f"schedule must be plateau or cosine, not {recipe.schedule!r}")
    cls, kw = keras.optimizers.Adam, {}
    if recipe.weight_decay:
        cls, kw = keras.optimizers.AdamW, {"weight_decay": recipe.weight_decay}
    if recipe.ema:
        cls, kw = _with_ema_warmup(cls), {**kw, "use_ema": True, "ema_momentum": float(recipe.ema)}
    opt = cls(lr, **kw)
    if recipe.weight_decay:
        # Decay only the kernels (conv, dense, LSTM input and recurrent), as timm and BERT do: biases and
        # BatchNorm's scale/offset are few, and shrinking them only fights the normalisation.
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return opt


def _with_ema_warmup(optimizer_cls):
    """The optimizer with its weight EMA warmed up as in tf.train.ExponentialMovingAverage:
    momentum min(ema, (1 + t) / (10 + t)) at step t. Keras' own EMA starts at full momentum, so
    after a short run the 'average' would still be mostly the random initial weights."""
    from keras import ops

    class WarmEMA(optimizer_cls):
        def _update_model_variables_moving_average(self, trainable_variables):
            if not self.use_ema:
                return
            t = ops.cast(self.iterations, "float32")
            m = ops.minimum(self.ema_momentum, (1.0 + t) / (10.0 + t))
            for var, average in zip(trainable_variables, self._model_variables_moving_average):
                if average is not None:
                    mv = ops.cast(m, average.dtype)
                    average.assign(mv * average + (1.0 - mv) * ops.cast(var, average.dtype))

    WarmEMA.__name__ = f"{optimizer_cls.__name__}WarmEMA"
    return WarmEMA


def top_class_share():
    """Keras metric: share of predictions falling in the single most-predicted class. 1.0 means
    the model collapsed onto one class (the thesis model's plateau). Computed inside evaluation,
    so it costs no extra pass over the validation split."""
    import keras
    from keras import ops

    class TopClassShare(keras.metrics.Metric):
        def __init__(self, name="top_class_share", **kw):
            super().__init__(name=name, **kw)
            self.counts = self.add_variable(shape=(NUM_CLASSES,), initializer="zeros", name="counts")

        def update_state(self, y_true, y_pred, sample_weight=None):
            hits = ops.one_hot(ops.argmax(y_pred, axis=-1), NUM_CLASSES, dtype=self.counts.dtype)
            self.counts.assign_add(ops.sum(hits, axis=0))

        def result(self):
            return ops.max(self.counts) / ops.maximum(ops.sum(self.counts), 1.0)

        def reset_state(self):
            self.counts.assign(ops.zeros((NUM_CLASSES,), dtype=self.counts.dtype))

    return TopClassShare()


def _epoch_log(out_dir: Path):
    """Keras callback: per-epoch metrics, lr and time; history.csv rewritten atomically."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows: list[dict] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            opt = self.model.optimizer
            lr = opt.learning_rate
            lr = float(lr(opt.iterations)) if callable(lr) else float(np.asarray(lr))
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                   "lr": lr, "seconds": time.perf_counter() - self.t0}
            row.pop("learning_rate", None)
            self.rows.append(row)
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(row))
            w.writeheader()
            w.writerows(self.rows)
            atomic_write_text(out_dir / "history.csv", buf.getvalue())

    return EpochLog()


def saliency(model, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """|d p(class) / d pixel| per image, normalised to [0, 1]."""
    import tensorflow as tf
    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        probs = model(xt, training=False)
        score = tf.reduce_sum(probs * tf.one_hot(classes, NUM_CLASSES), axis=1)
    g = np.abs(tape.gradient(score, xt).numpy())[..., 0]
    g /= np.maximum(g.reshape(len(g), -1).max(axis=1), 1e-12)[:, None, None]
    return g


def _pick_saliency(y_true, y_pred, per_class: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    picks = []
    for k in range(NUM_CLASSES):
        for ok in (True, False):
            idx = np.flatnonzero((y_true == k) & ((y_pred == k) == ok))
            picks += rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist()
    return picks


# What a run folder holds: an earlier version's run folder (no ownership marker) is adopted with these.
RUN_FILES = ("model.keras", "manifest.json", "history.csv", "data_report.json", "classification_report.txt",
             "classification_report.json", "class_distribution.png", "samples.png", "curves.png",
             "confusion_matrix.png", "per_class_error.png", "saliency.png", ".best.keras")


def _legacy_run(out_dir: Path) -> tuple[str, ...] | None:
    """RUN_FILES if ``out_dir`` holds a run manifest an earlier version wrote, else None."""
    from edge_runtime.manifest import ManifestError, read_manifest
    try:
        return RUN_FILES if read_manifest(out_dir).kind == "run" else None
    except (ManifestError, OSError):
        return None


@contextmanager
def staged_run_folder(out_dir, inputs=(), flag: str = "--out", data=()):
    """Yield a hidden sibling folder to write the run into; on success it replaces ``out_dir`` whole,
    so an existing run's model.keras and manifest are never mixed with a new one's (an interrupted
    or failed run leaves the old folder as it was). ``out_dir`` must be new, empty, or a run folder
    with nothing but what a training wrote (edge_runtime/outputs.py); never one of ``inputs``."""
    from edge_runtime.outputs import replaced_whole
    out_dir = Path(out_dir)
    with replaced_whole(out_dir, "train", inputs=inputs, data=data, flag=flag, tag="training",
                        legacy=_legacy_run(out_dir)) as work:
        yield work


def train_run(cfg: TrainConfig, data_root, out_dir, resume: dict | None = None) -> Manifest:
    """Train, evaluate on the test split once, write the run folder (whole, when done); -> the manifest.
    After every epoch a checkpoint goes to ``.<out>.resume/``; ``resume`` (``train.resume.read_state``)
    continues an interrupted run from it."""
    params, recipe, spec = cfg.resolved()
    from . import resume as R
    from .data import resolve_root
    from edge_runtime.outputs import check_target, model_files
    inputs, data = [cfg.teacher, *model_files(cfg.init)], [resolve_root(data_root)]
    check_target(out_dir, inputs, "--out", data)  # before the checkpoint folder beside it is made
    ckpt = R.prepare(out_dir, resume is not None)
    with staged_run_folder(out_dir, inputs, data=data) as work:
        print(f"writing the run to {work} until it is complete, then to {out_dir}")
        if resume is not None:
            print(f"resuming after epoch {resume['epoch']} from {ckpt}")
        manifest = _train_into(cfg, params, recipe, spec, data_root, work,
                               checkpoint=(ckpt, R.settings_of(cfg, data_root), resume))
    R.finish(out_dir)
    return manifest


def _training_data(cfg: TrainConfig, spec: PreprocessSpec, data_root, out_dir: Path) -> tuple[Dataset, dict]:
    """Load and split the data (less the held-out fold of a teacher); write the data report and pictures."""
    data = load_dataset(data_root, spec, cfg.val_fraction, cfg.seed, cfg.fraction, cfg.progress)
    if cfg.holdout:
        k, fold, fold_seed = cfg.holdout
        data.train = data.train.take(np.flatnonzero(fold_of(data.train.labels, k, fold_seed) != fold))
        print(f"out-of-fold teacher: fold {fold} of {k} held out; training on the other {len(data.train):,} faces")
    summary = data.summary()
    atomic_write_json(out_dir / "data_report.json", summary)
    n_skipped = sum(len(v) for v in summary["skipped"].values())
    if n_skipped:
        print(f"skipped {n_skipped} unreadable image(s); listed in {out_dir / 'data_report.json'}")
    reports.class_distribution(summary["class_counts"], out_dir / "class_distribution.png")
    reports.sample_grid(data.train.images, data.train.labels, out_dir / "samples.png", seed=cfg.seed)
    return data, summary


def _teacher_targets(cfg: TrainConfig, recipe: Recipe, data: Dataset) -> tuple[np.ndarray | None, dict | None]:
    """Distillation: soft targets for the training faces and the facts of where they came from."""
    if not cfg.teacher:
        return None, None
    from .distill import load_soft_labels, soft_targets
    table, tmeta, sha = load_soft_labels(cfg.teacher)
    teacher = {"file": str(Path(cfg.teacher).resolve()), "sha256": sha, "weight": recipe.distill,
               "teachers": tmeta["teachers"], "ensemble_train_accuracy": tmeta["ensemble_train_accuracy"]}
    return soft_targets(data.train, table, recipe.distill), teacher


def _device_framed(cfg: TrainConfig, recipe: Recipe, data: Dataset,
                   spec: PreprocessSpec) -> tuple[np.ndarray | None, dict | None]:
    """The training faces as the daemon's detector and crop frame them, when the recipe asks."""
    if not recipe.reframe:
        return None, None
    from .reframe import reframe_split
    x_device, found = reframe_split(data.train, spec, seed=cfg.weights_seed, progress=cfg.progress, model=cfg.model)
    print(f"device framing: the detector found {found.mean():.1%} of {len(found):,} training faces; "
          f"{recipe.reframe:.0%} of faces per step are shown that way")
    return x_device, {"share": recipe.reframe, "detector": "yunet", "found": int(found.sum()), "faces": len(found)}


def _callbacks(recipe: Recipe, out_dir: Path, best_path: Path, validating: bool) -> list:
    import keras
    callbacks = []
    if validating:
        callbacks += [
            # First, so that validation, the checkpoint and early stopping all see the averaged weights.
            *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if recipe.ema else []),
            keras.callbacks.ModelCheckpoint(best_path, monitor="val_accuracy", mode="max", save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=recipe.patience),
        ]
    callbacks.append(_epoch_log(out_dir))
    if recipe.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3,
                                                           min_lr=1e-5, verbose=1))
    return callbacks


def _train_into(cfg: TrainConfig, params: dict, recipe: Recipe, spec: PreprocessSpec, data_root,
                out_dir: Path, checkpoint: tuple | None = None) -> Manifest:
    """``checkpoint``: (folder, settings, a state to resume or None), as train_run passes it."""
    import keras

    keras.utils.set_random_seed(cfg.weights_seed)
    data, summary = _training_data(cfg, spec, data_root, out_dir)
    y_train, teacher = _teacher_targets(cfg, recipe, data)
    x_device, reframed = _device_framed(cfg, recipe, data, spec)

    precision = resolve_precision(recipe.precision)
    with dtype_policy(precision):
        model = build(cfg.model, params)
        if cfg.init:
            model.set_weights(keras.models.load_model(init_run(cfg.init, cfg.model, params), compile=False).get_weights())
        restore = checkpoint[2] if checkpoint else None
        start = int(restore["epoch"]) if restore else 0
        train_ds, val_ds, steps = _datasets(data, spec, recipe, cfg.weights_seed, y_train, x_device, start)
        schedule = None  # the recipe's, unless a time budget needs one whose end can move
        if recipe.time_budget_min and recipe.schedule == "cosine":
            from .budget import stretchable_cosine
            warm = _warmup_steps(recipe, steps)
            schedule = stretchable_cosine(recipe.lr / 10, recipe.lr, warm, recipe.epochs * steps - warm, COSINE_ALPHA)
        model.compile(optimizer=_optimizer(recipe, steps, schedule),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
                      metrics=["accuracy", top_class_share()])
        best_path = out_dir / ".best.keras"
        validating = val_ds is not None  # else a refit: no checkpoint or early stopping, last weights kept
        callbacks = _callbacks(recipe, out_dir, best_path, validating)
        distilled = f", distilled from {len(teacher['teachers'])} teacher(s)" if teacher else ""
        on = f"validating on {len(data.val):,}" if validating else "no validation: refit, the final weights are kept"
        print(f"training {cfg.model} ({model.count_params():,} parameters, {precision}"
              f"{f', weight EMA {recipe.ema}' if recipe.ema else ''}{distilled}) on {len(data.train):,} images, "
              f"{on}; {recipe.epochs} epochs x {steps} steps")
        budget = None
        if recipe.time_budget_min:
            from .budget import budget_callback
            budget = budget_callback(60 * float(recipe.time_budget_min), recipe.epochs, steps, schedule,
                                     recipe.bn_recalibration)
            callbacks.append(budget)
        saver = None
        if checkpoint:
            from .resume import checkpoint_callback
            kind = {type(c).__name__: c for c in callbacks}
            saver = checkpoint_callback(checkpoint[0], checkpoint[1], epoch_log=kind["EpochLog"], budget=budget,
                                        schedule=schedule, early=kind.get("EarlyStopping"),
                                        best=kind.get("ModelCheckpoint"), best_path=best_path,
                                        swap=kind.get("SwapEMAWeights"), restore=restore)
            callbacks.append(saver)  # last: it saves what the others decided this epoch
        t0 = time.perf_counter()
        if restore and restore["stopped"]:  # killed after its last epoch: nothing left to fit
            saver.set_model(model)
            saver.restore()
        else:
            model.fit(train_ds, validation_data=val_ds, epochs=recipe.epochs, steps_per_epoch=steps,
                      callbacks=callbacks, verbose=(1 if sys.stdout.isatty() and cfg.progress else 2),
                      initial_epoch=start)
        # a resumed run's fitting time includes the epochs before the interruption
        fit_seconds = time.perf_counter() - t0 + (sum(r["seconds"] for r in restore["history_rows"]) if restore else 0)
        # A refit keeps the last epoch's weights; fit() has already written the EMA into them.
        best = keras.models.load_model(best_path, compile=False) if validating else model
        weights = best.get_weights()
    best_path.unlink(missing_ok=True)
    # The saved model is a plain float32 copy of the best weights: exporters, the Keras reference
    # and anyone loading model.keras compute in float32 whatever the training precision was.
    model = build(cfg.model, params)
    model.set_weights(weights)
    history = {k: [float(v) for v in vals] for k, vals in (saver.history if saver else model.history.history).items()}
    bn = recalibrate(model, data, spec, cfg.progress) if recipe.bn_recalibration else None
    train_seconds = fit_seconds + (bn["seconds"] if bn else 0.0)
    run = {"model": cfg.model, "params": params, "recipe": asdict(recipe), "precision": precision,
           "seed": cfg.seed, "init_seed": cfg.weights_seed, "fraction": cfg.fraction, "teacher": teacher,
           "init": _init_facts(cfg.init), "reframe": reframed,
           "holdout": dict(zip(("k", "fold", "fold_seed"), cfg.holdout)) if cfg.holdout else None,
           "saliency_per_class": cfg.saliency_per_class}
    return finish_run(model, run, data, spec, summary, history, train_seconds, bn, out_dir,
                      extra={"time_budget": budget.report()} if budget else None)


def _init_facts(run_dir) -> dict | None:
    if not run_dir:
        return None
    from edge_runtime.manifest import read_manifest
    m = read_manifest(run_dir)
    return {"run": str(Path(run_dir).resolve()), "model_sha256": m.model_sha256,
            "test_accuracy": ((m.metrics or {}).get("test") or {}).get("accuracy")}


def recalibrate(model, data: Dataset, spec: PreprocessSpec, progress: bool = False) -> dict | None:
    """Re-estimate the BatchNorm statistics on the clean training faces (train/batchnorm.py);
    -> what was done, with validation accuracy before and after when there is a validation split."""
    from .batchnorm import batchnorm_layers, recalibrate_batchnorm
    if not batchnorm_layers(model):
        return None
    x_val = scale_pixels(data.val.images, spec) if len(data.val) else None

    def val_accuracy():
        if x_val is None:
            return None
        return float(np.mean(model.predict(x_val, batch_size=256, verbose=0).argmax(1) == data.val.labels))

    before = val_accuracy()
    t0 = time.perf_counter()
    layers = recalibrate_batchnorm(model, scale_pixels(data.train.images, spec), progress=progress)
    seconds = time.perf_counter() - t0
    after = val_accuracy()
    moved = f": validation accuracy {before:.2%} -> {after:.2%}" if before is not None else ""
    print(f"re-estimated {layers} BatchNorm layers on {len(data.train):,} clean training faces in {seconds:.0f} s{moved}")
    return {"layers": layers, "faces": len(data.train), "seconds": round(seconds, 1),
            "val_accuracy_before": before, "val_accuracy_after": after}


def finish_run(model, run: dict, data: Dataset, spec: PreprocessSpec, summary: dict, history: dict,
               train_seconds: float, bn: dict | None, out_dir: Path, extra: dict | None = None) -> Manifest:
    """Save ``model`` (float32), score it once on the test split, write the reports and the manifest."""
    import keras
    out_dir = Path(out_dir)
    tmp = out_dir / ".model.tmp.keras"
    model.save(tmp)
    tmp.replace(out_dir / "model.keras")
    model = keras.models.load_model(out_dir / "model.keras")  # evaluate exactly what was saved

    x_test = scale_pixels(data.test.images, spec)
    probs = model.predict(x_test, batch_size=256, verbose=0)
    y_pred = probs.argmax(1)
    y_true = data.test.labels
    test_metrics = metrics(y_true, y_pred)
    report = reports.write_classification_report(y_true, y_pred, out_dir)
    reports.learning_curves(history, out_dir / "curves.png")
    cm = reports.confusion_heatmap(y_true, y_pred, out_dir / "confusion_matrix.png",
                                   f"{run['model']}: test accuracy {test_metrics['accuracy']:.1%} (row-normalised)")
    reports.per_class_error(cm, out_dir / "per_class_error.png")
    picks = _pick_saliency(y_true, y_pred, run["saliency_per_class"], run["seed"])
    if picks:
        sal = saliency(model, x_test[picks], y_pred[picks])
        reports.saliency_grid(data.test.images[picks], sal, y_true[picks], y_pred[picks],
                              out_dir / "saliency.png", "Saliency |d p(predicted) / d pixel|, green = correct")

    val_acc = history.get("val_accuracy")  # None in a refit
    epochs_run = len(history["loss"])
    best_epoch = int(np.argmax(val_acc)) + 1 if val_acc else epochs_run
    manifest = {
        "schema": SCHEMA_VERSION,
        "kind": "run",
        "model": run["model"],
        "params": run["params"],
        "recipe": run["recipe"],
        "precision": run["precision"],  # what recipe.precision resolved to on the training machine
        "seed": run["seed"],
        "init_seed": run["init_seed"],
        "labels": list(LABELS),
        "preprocessing": spec.to_dict(),
        "model_file": "model.keras",
        "model_sha256": sha256_file(out_dir / "model.keras"),
        "parameters": int(model.count_params()),
        "data": {k: summary[k] for k in ("root", "layout", "test_split", "val_fraction", "sizes", "files_hash")}
        | {"fraction": run["fraction"], "skipped": sum(len(v) for v in summary["skipped"].values())},
        # val_accuracy: the best epoch's, which chose the checkpoint (before BatchNorm re-estimation)
        "metrics": {"val_accuracy": float(max(val_acc)) if val_acc else None, "best_epoch": best_epoch,
                    "epochs_run": epochs_run, "test": test_metrics,
                    "test_weighted_f1": float(report["weighted avg"]["f1-score"])},
        "bn_recalibration": bn,  # None when off or the model has no BatchNorm
        "teacher": run["teacher"],  # None unless distilled: the soft-label file and the runs it came from
        "init": run.get("init"),  # None unless fine-tuned: the run whose weights training started from
        "reframe": run.get("reframe"),  # None unless trained on faces in the device's framing
        "holdout": run.get("holdout"),  # None unless an out-of-fold teacher: the fold it never saw
        "train_seconds": round(train_seconds, 1),  # fit + BatchNorm re-estimation
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        **(extra or {}),
    }
    return write_manifest(out_dir, manifest)




