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
    """Dynamic int8 for LSTM and MatMul (weights int8, activations quantized per call).

    Conv layers stay fp32: onnxruntime's dynamic ConvInteger is slower than its float conv.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = convert_fp32(ctx)
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
        with open(src, "wb") as f:
            f.write(fp32)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM", "MatMul", "Gemm"])
        with open(dst, "rb") as f:
            return f.read()
