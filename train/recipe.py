"""A training run's settings: the registered model's parameters and recipe, with the caller's
overrides, checked before any data is loaded or TensorFlow starts; the precision to train in."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .models import DISTILL_WEIGHT, PRECISIONS, Recipe, get_entry, parse_stem
from edge_runtime.fields import checked
from edge_runtime.preprocess import PreprocessSpec


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
        recipe = check_recipe(recipe)
        if not 0.0 <= float(self.val_fraction) <= 0.5 or not 0.0 < float(self.fraction) <= 1.0:
            raise ValueError(f"--val-fraction must be in [0, 0.5] and --fraction in (0, 1], "
                             f"not {self.val_fraction!r} / {self.fraction!r}")
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


FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "patience": "--patience",
         "time_budget_min": "--time, minutes"}


def check_recipe(recipe: Recipe) -> Recipe:
    """The recipe with every field checked against its declaration in train.models.Recipe (NaN and
    inf fail too; a whole 10.0 for an int field becomes 10); a ValueError names the flag."""
    values = {f: getattr(recipe, f) for f in Recipe.__dataclass_fields__}
    return replace(recipe, **checked(Recipe, values, where=lambda k: f"{k} ({FLAGS[k]})" if k in FLAGS else k))


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


def builder_defaults(model: str) -> dict:
    """The keyword defaults of a registered model's builder: what a parameter that a run's manifest
    lacks (added later, with the old behaviour as its default) was when that run trained."""
    import inspect
    sig = inspect.signature(get_entry(model).build)
    return {k: v.default for k, v in sig.parameters.items() if v.default is not inspect.Parameter.empty
            and k != "unroll"}


def init_run(run_dir, model: str, params: dict) -> Path:
    """The model file of a run to start from, checked: same model and params, sha256 as recorded."""
    from edge_runtime.manifest import ManifestError, read_manifest, verify_file
    try:
        m = read_manifest(run_dir)
        # a parameter added to the builder since that run was written: the run had the builder's default
        defaults, ran = builder_defaults(model), dict(m.params or {})
        same = m.model == model and all(ran.get(k, defaults.get(k)) == v for k, v in params.items()) and \
            all(v == defaults.get(k) for k, v in ran.items() if k not in params)
        if m.kind != "run" or not same:
            raise ValueError(f"--init {run_dir} is not a {model} run with these parameters")
        path = Path(run_dir) / m.model_file
        verify_file(path, m.model_sha256)
    except ManifestError as e:
        raise ValueError(f"--init {run_dir}: {e}") from None
    return path
