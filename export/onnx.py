"""Keras -> ONNX (tf2onnx, opset 17, dynamic batch) and onnxruntime int8 quantization.

The trained (looped) Keras 3 model converts through ``tf.function`` to ONNX ``LSTM`` ops,
measured exact (max |dp| < 1e-7); the unrolled graph would be larger and slower.
"""
from __future__ import annotations

import os
import tempfile

OPSET = 17


def onnx_fp32_bytes(ctx) -> bytes:
    import tensorflow as tf
    import tf2onnx

    model = ctx.model()
    fn = tf.function(lambda x: model(x, training=False))
    spec = [tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET)
    return proto.SerializeToString()


def convert_fp32(ctx) -> bytes:
    return ctx.cached("onnx-fp32", lambda: onnx_fp32_bytes(ctx))


def convert_int8(ctx) -> bytes:
    """Static QDQ int8 for the conv stem (calibrated on the train images), then dynamic int8 for
    LSTM / MatMul / Gemm (weights int8, activations quantized per call).

    Measured on the cbilstm: static conv 1.66 -> 0.65 ms/face, while onnxruntime's dynamic
    ConvInteger is no faster than its float conv; a model without convs gets the dynamic pass only.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = convert_fp32(ctx)
    graph = onnx.load_from_string(fp32).graph
    has_conv = any(n.op_type == "Conv" for n in graph.node)
    input_name = graph.input[0].name
    calib = ctx.calibration() if has_conv else None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = ({input_name: calib[i:i + 1]} for i in range(len(calib)))

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        src, pre, conv, dst = (os.path.join(d, f) for f in ("fp32.onnx", "pre.onnx", "conv.onnx", "int8.onnx"))
        with open(src, "wb") as f:
            f.write(fp32)
        if has_conv:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(pre, conv, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            op_types_to_quantize=["Conv", "MaxPool"], activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8)
            src = conv
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM", "MatMul", "Gemm"])
        with open(dst, "rb") as f:
            return f.read()
