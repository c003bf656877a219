"""The grid search's estimator: a scikeras ``KerasClassifier`` over ``train.models.build``, seeded per
fit and with TF's threads capped in fresh worker processes, and how a grid key routes to its
parameters (``ROUTES``)."""
from __future__ import annotations

import time

import numpy as np

from edge_runtime.labels import NUM_CLASSES

# user-facing grid key -> scikeras parameter; any other key is an architecture parameter
ROUTES = {"model": "model__model_name", "lr": "optimizer__learning_rate",
          "batch_size": "batch_size", "epochs": "epochs"}


def limit_tf_threads(n: int | None) -> None:
    """Cap TF's CPU threads if this process has not started TensorFlow yet (fresh workers)."""
    from .threads import tf_threads
    tf_threads(n)


def _keras_model(model_name: str = "thesis", **kwargs):
    """scikeras build function: a registered, uncompiled model (scikeras compiles it)."""
    import random

    from keras.src.random import seed_generator

    from .models import build
    seed = (kwargs.get("params") or {}).get("random_state") or 0
    for k in ("meta", "compile_kwargs", "params"):  # scikeras passes these to **kwargs builders
        kwargs.pop(k, None)
    # Unseeded Keras initialisers draw their seeds from the global `random` module, which a
    # Dask worker's event loop also draws from (measured: the 2nd fit in a worker got other
    # weights). A private generator per build makes the weights independent of the process.
    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)
    try:
        return build(model_name, kwargs)
    finally:
        seed_generator.python_random = shared


def make_estimator(seed: int = 1337, threads: int | None = None, **params):
    """A scikeras KerasClassifier for the grid; ``params`` are routed scikeras parameters.

    scikeras 0.13 works with Keras 3.15 / scikit-learn 1.9 (checked: clone, set_params,
    GridSearchCV), so it is used as is; the subclass only adds what a search needs.
    """
    import keras
    from scikeras.utils.transformers import ClassifierLabelEncoder
    from scikeras.wrappers import KerasClassifier

    class FerClassifier(KerasClassifier):
        """KerasClassifier with the 7 canonical classes pinned (a fold of a small subset can miss
        'disgust', which would shrink scikeras' one-hot encoding below the model's 7 outputs),
        Keras' own RNGs seeded per fit, and TF threads capped in fresh worker processes."""

        def __init__(self, model=_keras_model, threads=None, **kwargs):
            super().__init__(model=model, **kwargs)
            self.threads = threads

        @property
        def target_encoder(self):
            return ClassifierLabelEncoder(loss=self.loss, categories=[np.arange(NUM_CLASSES)])

        def fit(self, X, y, **kwargs):
            limit_tf_threads(self.threads)
            import tensorflow as tf
            tf.config.experimental.enable_op_determinism()
            keras.utils.set_random_seed(self.random_state)  # initialisers, shuffling, dropout
            t0 = time.perf_counter()
            # Keras' own per-epoch shuffle draws TF op seeds whose state depends on what the
            # process ran before (measured: the 2nd fit in a Dask worker differed from a fresh
            # process), so each epoch's order comes from a numpy generator seeded per fit.
            rng = np.random.default_rng(self.random_state)
            X, y = np.asarray(X), np.asarray(y)
            out = None
            for epoch in range(self.epochs):
                p = rng.permutation(len(X))
                out = super().fit(X[p], y[p], epochs=1, **kwargs) if epoch == 0 else \
                    super().partial_fit(X[p], y[p], **kwargs)
            shown = {k: v for k, v in self.get_params().items()
                     if k.startswith("model__") or k in ROUTES.values()}
            print(f"  fit done in {time.perf_counter() - t0:5.1f} s on {len(X)} images: "
                  f"{_short(shown)}", flush=True)
            return out

    defaults = dict(model__model_name="thesis", optimizer=keras.optimizers.Adam,
                    optimizer__learning_rate=1e-3, loss="categorical_crossentropy",
                    metrics=["accuracy"], batch_size=64, epochs=30, shuffle=False, verbose=0,
                    random_state=seed)
    return FerClassifier(threads=threads, **{**defaults, **params})


def _short(routed: dict) -> str:
    back = {v: k for k, v in ROUTES.items()}
    return ", ".join(f"{back.get(k, k.removeprefix('model__'))}={v}" for k, v in sorted(routed.items()))


def route(cell: dict) -> dict:
    return {ROUTES.get(k, f"model__{k}"): v for k, v in cell.items()}
