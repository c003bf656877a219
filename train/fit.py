"""Fit a registered model on a Dataset and write a complete run folder: the steps of a run, in order
(settings: train/recipe.py; optimizer and callbacks: train/optimize.py; scoring, reports and the
manifest: train/evaluate.py).

Run folder: model.keras, manifest.json, history.csv, data_report.json, classification_report.*,
class_distribution.png, samples.png, curves.png, confusion_matrix.png, per_class_error.png,
saliency.png.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge_runtime.labels import NUM_CLASSES
from edge_runtime.manifest import Manifest, atomic_write_json
from edge_runtime.preprocess import PreprocessSpec, scale_pixels

from . import reports
from .data import Dataset, fold_of, load_dataset
from .evaluate import finish_run, recalibrate
from .models import CLASS_WEIGHTS, Recipe, build
from .optimize import COSINE_ALPHA, fit_callbacks, make_optimizer, top_class_share, warmup_steps
from .recipe import TrainConfig, dtype_policy, init_run, resolve_precision


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights, mean 1 over the training samples. 'sqrt' halves the imbalance in log scale."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    if mode == "none":
        return np.ones(NUM_CLASSES)
    base = counts.sum() / (NUM_CLASSES * np.maximum(counts, 1))
    w = {"balanced": base, "sqrt": np.sqrt(base)}.get(mode)
    if w is None:
        raise ValueError(f"class_weight must be one of {', '.join(CLASS_WEIGHTS)}, not {mode!r}")
    return w / (w[labels].mean())


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
            warm = warmup_steps(recipe, steps)
            schedule = stretchable_cosine(recipe.lr / 10, recipe.lr, warm, recipe.epochs * steps - warm, COSINE_ALPHA)
        model.compile(optimizer=make_optimizer(recipe, steps, schedule),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
                      metrics=["accuracy", top_class_share()])
        best_path = out_dir / ".best.keras"
        validating = val_ds is not None  # else a refit: no checkpoint or early stopping, last weights kept
        callbacks = fit_callbacks(recipe, out_dir, best_path, validating)
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
