"""Keras -> TFLite with a fixed batch of 1 and unrolled LSTMs.

Why unrolled: Keras 3's looped LSTM becomes a WHILE loop (full-int8 conversion crashed), and
tf_keras' fused UNIDIRECTIONAL_SEQUENCE_LSTM kernel was measured numerically wrong (a trained
thesis model fell from 42.7 % to 32.2 %). ``unroll=True`` turns each LSTM into plain
FULLY_CONNECTED / element-wise ops: exact in fp32 and quantizable to full int8.
"""
from __future__ import annotations


def _fixed_batch(model):
    import keras
    inp = keras.Input(batch_shape=(1,) + tuple(model.input_shape[1:]), name="image")
    return keras.Model(inp, model(inp), name=model.name)


def _converter(ctx):
    import tensorflow as tf
    return tf.lite.TFLiteConverter.from_keras_model(_fixed_batch(ctx.unrolled_model()))


def _representative(ctx):
    calib = ctx.calibration()

    def gen():
        for i in range(len(calib)):
            yield [calib[i:i + 1]]
    return gen


def convert_fp32(ctx) -> bytes:
    return _converter(ctx).convert()


def _full_integer(ctx, ops, io_type) -> bytes:
    """Calibrated post-training quantization with integer input/output tensors."""
    import tensorflow as tf
    conv = _converter(ctx)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative(ctx)
    conv.target_spec.supported_ops = [ops]
    conv.inference_input_type = io_type
    conv.inference_output_type = io_type
    return conv.convert()


def convert_int8(ctx) -> bytes:
    """Full integer: int8 weights and activations, int8 input and output tensors."""
    import tensorflow as tf
    return _full_integer(ctx, tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.int8)


def convert_int16x8(ctx) -> bytes:
    """int16 activations, int8 weights (more precise than 8x8, fewer accelerated kernels)."""
    import tensorflow as tf
    return _full_integer(ctx, tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8, tf.int16)


def convert_dynamic_range(ctx) -> bytes:
    """int8 weights, float activations computed with on-the-fly quantization; float I/O."""
    import tensorflow as tf
    conv = _converter(ctx)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    return conv.convert()
