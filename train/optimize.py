"""The optimizer, its learning-rate schedule and weight average, and the callbacks of a fit."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from edge_runtime.labels import NUM_CLASSES
from edge_runtime.manifest import atomic_write_text

from .models import SCHEDULES, Recipe


NO_DECAY = ("bias", "gamma", "beta")  # Keras variable names kept out of weight decay


COSINE_ALPHA = 0.01  # the cosine schedule's floor, as a share of the peak learning rate


def warmup_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    return min(2 * steps_per_epoch, recipe.epochs * steps_per_epoch // 5)


def make_optimizer(recipe: Recipe, steps_per_epoch: int, schedule=None):
    """``schedule``: a learning-rate schedule to use instead of the recipe's (a time budget's)."""
    import keras
    lr = recipe.lr
    if schedule is not None:
        lr = schedule
    elif recipe.schedule == "cosine":
        warm = warmup_steps(recipe, steps_per_epoch)
        total = max(1, recipe.epochs * steps_per_epoch - warm)
        lr = keras.optimizers.schedules.CosineDecay(recipe.lr / 10, total, alpha=COSINE_ALPHA,
                                                   warmup_target=recipe.lr, warmup_steps=warm)
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {recipe.schedule!r}")
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


def epoch_log(out_dir: Path):
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


def fit_callbacks(recipe: Recipe, out_dir: Path, best_path: Path, validating: bool) -> list:
    import keras
    callbacks = []
    if validating:
        callbacks += [
            # First, so that validation, the checkpoint and early stopping all see the averaged weights.
            *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if recipe.ema else []),
            keras.callbacks.ModelCheckpoint(best_path, monitor="val_accuracy", mode="max", save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=recipe.patience),
        ]
    callbacks.append(epoch_log(out_dir))
    if recipe.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3,
                                                           min_lr=1e-5, verbose=1))
    return callbacks
