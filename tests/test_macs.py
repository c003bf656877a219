"""The MAC counter (benchmarks/macs.py) against hand counts, on graphs converted as export converts."""
import glob

import numpy as np
import pytest

from benchmarks.macs import count, count_onnx, count_tflite

from .conftest import REPO

pytestmark = pytest.mark.slow  # converts small Keras models


class _Ctx:
    def __init__(self, model):
        self._m = model

    def model(self):
        return self._m

    def unrolled_model(self):
        return self._m


def _tflite(model) -> bytes:
    from export.tflite import convert_fp32
    return convert_fp32(_Ctx(model))


def _onnx(model) -> bytes:
    from export.onnx import onnx_fp32_bytes
    return onnx_fp32_bytes(_Ctx(model))


def _model(shape, *layers):
    import keras
    inp = keras.Input(shape)
    x = inp
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


def test_strided_same_padded_conv():
    from keras import layers
    # 9x9x3 -> stride 2, same padding -> 5x5x8; each output is a 3x3x3 dot product
    m = _model((9, 9, 3), layers.Conv2D(8, 3, strides=2, padding="same"))
    hand = 5 * 5 * 8 * (3 * 3 * 3)
    assert count_tflite(_tflite(m))["macs"] == hand == 5400
    assert count_onnx(_onnx(m))["macs"] == hand


def test_depthwise_conv():
    from keras import layers
    # one 3x3 filter per channel: 7x7x6 outputs (same padding), 9 MACs each
    m = _model((7, 7, 6), layers.DepthwiseConv2D(3, padding="same"))
    hand = 7 * 7 * 6 * 9
    got = count_tflite(_tflite(m))
    assert got["macs"] == hand and set(got["by_op"]) == {"DEPTHWISE_CONV_2D"}
    assert count_onnx(_onnx(m))["macs"] == hand


def test_fully_connected():
    from keras import layers
    m = _model((20,), layers.Dense(7))
    assert count_tflite(_tflite(m))["macs"] == 20 * 7
    assert count_onnx(_onnx(m))["macs"] == 20 * 7


def test_unrolled_lstm_steps():
    """Two steps of an LSTM(5) over 3 features: every step multiplies [x_t, h_(t-1)] by the four gates'
    kernels. TFLite (unrolled, as export converts) folds away step 1's product with the zero initial
    state; ONNX's LSTM op computes it."""
    from keras import layers
    hidden, feats, steps = 5, 3, 2
    unrolled = _model((steps, feats), layers.LSTM(hidden, unroll=True))
    looped = _model((steps, feats), layers.LSTM(hidden))
    looped.set_weights(unrolled.get_weights())
    per_step_input, per_step_recurrent = 4 * hidden * feats, 4 * hidden * hidden
    assert count_tflite(_tflite(unrolled))["macs"] == steps * per_step_input + (steps - 1) * per_step_recurrent
    assert count_onnx(_onnx(looped))["macs"] == steps * (per_step_input + per_step_recurrent) == 320


def test_packaged_model_tflite_and_onnx_agree():
    """The shipped model's three files: the ONNX counts equal each other, and exceed TFLite's by exactly
    the recurrent products of each LSTM direction's first step (zero state, folded in TFLite)."""
    files = {p.rsplit(".", 2)[0].rsplit("_", 1)[-1] + "." + p.rsplit(".", 1)[-1]: p
             for p in glob.glob(str(REPO / "edge_runtime/models/cbilstm/*.*")) if p.endswith((".tflite", ".onnx"))}
    counts = {k: count(p)["macs"] for k, p in files.items()}
    assert set(counts) == {"int8.tflite", "int8.onnx", "fp32.onnx"}
    assert counts["int8.onnx"] == counts["fp32.onnx"]
    layers_, units = 2, 64  # the registered cbilstm: 2 BiLSTM(64)
    assert counts["int8.onnx"] - counts["int8.tflite"] == layers_ * 2 * 4 * units * units
    assert abs(counts["int8.onnx"] / counts["int8.tflite"] - 1) < 0.002
    assert 50e6 < counts["int8.tflite"] < 51e6


def test_unknown_file_is_refused(tmp_path):
    from benchmarks.macs import MacError
    p = tmp_path / "model.keras"
    p.write_bytes(np.zeros(4, np.uint8).tobytes())
    with pytest.raises(MacError, match="tflite or .onnx"):
        count(p)


class _NamedCtx(_Ctx):
    def __init__(self, model, model_name, calibration):
        super().__init__(model)
        self.model_name, self._calibration = model_name, calibration

    def calibration(self):
        return self._calibration


@pytest.mark.parametrize("stem", ["8-d16s-p-d16", "8s-d16-p-d16"])
def test_the_first_conv_on_a_grey_image_becomes_copies_and_a_depthwise_conv_with_the_same_output(stem):
    from export.tflite import first_conv_as_depthwise
    from train.models import build
    model = build("cbilstm-lite", {"stem": stem, "lstm_units": 8, "row_features": 16}, unroll=True)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # BatchNorm statistics away from identity, so folding errors would show
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 2, w.shape).astype("float32") for w in layer.get_weights()])
    x = rng.random((8, 48, 48, 1), dtype=np.float32)
    rewritten = first_conv_as_depthwise(model)
    kinds = [type(la).__name__ for la in rewritten.layers[1:3]]
    assert kinds == ["Conv2D", "DepthwiseConv2D"] and rewritten.layers[1].kernel_size == (1, 1)
    np.testing.assert_allclose(rewritten.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    thesis = build("thesis", unroll=True)
    assert first_conv_as_depthwise(thesis) is thesis  # no conv on the image: nothing to rewrite
    import keras
    inp = keras.Input((48, 48, 1))
    conv = keras.layers.Conv2D(4, 3)(inp)
    both = keras.Model(inp, [conv, keras.layers.Flatten()(inp)])  # the image feeds more than the conv
    assert first_conv_as_depthwise(both) is both
    unbuilt = keras.Sequential([keras.layers.Conv2D(4, 3)])
    assert first_conv_as_depthwise(unbuilt) is unbuilt


def _first_kernels(blob: bytes) -> list[tuple]:
    """(op, kernel height, kernel width) of the graph's first two ops."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=blob)
    shapes = {t["index"]: t["shape"] for t in it.get_tensor_details()}
    return [(op["op_name"], *map(int, shapes[op["inputs"][1]][1:3])) for op in it._get_ops_details()[:2]]


def test_only_the_model_for_cpus_without_int8_dot_products_gets_the_rewrite_in_int8_tflite():
    from edge_runtime.packaged import DENSE, LIGHT
    from export.tflite import convert_int8
    from train.models import build
    model = build("cbilstm-lite", {"stem": "8-d16s-p-d16", "lstm_units": 8, "row_features": 16}, unroll=True)
    calib = np.random.default_rng(1).random((16, 48, 48, 1), dtype=np.float32)
    light, dense = (convert_int8(_NamedCtx(model, name, calib)) for name in (LIGHT, DENSE))
    assert _first_kernels(light) == [("CONV_2D", 1, 1), ("DEPTHWISE_CONV_2D", 3, 3)]
    assert _first_kernels(dense)[0] == ("CONV_2D", 3, 3)  # with dot products the conv is faster (VNNI: 5 %)
    assert count_tflite(light)["macs"] == count_tflite(dense)["macs"] + 48 * 48 * 8  # the copies are counted
