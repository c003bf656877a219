"""Keras -> TFLite with a fixed batch of 1 and unrolled LSTMs.

Why unrolled: Keras 3's looped LSTM becomes a WHILE loop (full-int8 conversion crashed), and
tf_keras' fused UNIDIRECTIONAL_SEQUENCE_LSTM kernel was measured numerically wrong (a trained
thesis model fell from 42.7 % to 32.2 %). ``unroll=True`` turns each LSTM into plain
FULLY_CONNECTED / element-wise ops: exact in fp32 and quantizable to full int8.

Full int8 also rewrites a first conv on a one-channel image (``first_conv_as_depthwise``): the same
products, in the form XNNPACK runs without padding the single channel to eight.
"""
from __future__ import annotations


def _fixed_batch(model):
    import keras
    inp = keras.Input(batch_shape=(1,) + tuple(model.input_shape[1:]), name="image")
    return keras.Model(inp, model(inp), name=model.name)


def first_conv_as_depthwise(model):
    """The same function with a first conv on a grey image computed as copies + a depthwise conv.

    XNNPACK's int8 conv kernels on AVX2 and on the Pi 4's Cortex-A72 (``c8`` kernels: no int8 dot
    products) pad each tap's input channels to eight, so a conv reading one channel does 8x its
    products: 27 % of cbilstm-lite's instructions on AVX2 for 4 % of its MACs. Copying the image to
    each filter's channel (a 1x1 conv with weights 1, exact in int8) and filtering each copy with a
    depthwise conv (XNNPACK's ``dwconv`` kernels pad nothing) is the same sum. Models without such
    a first layer are returned as they are.
    """
    import keras
    import numpy as np
    from keras import layers
    inputs = getattr(model, "inputs", None) or []
    conv = next((la for la in model.layers if type(la) is layers.Conv2D), None)
    if (len(inputs) != 1 or conv is None or conv.input is not inputs[0] or inputs[0].shape[-1] != 1
            or conv.groups != 1 or conv.kernel_size == (1, 1) or any(o is inputs[0] for o in model.outputs)):
        return model
    try:  # the rest of the graph must hang from the conv's output alone (the image feeds nothing else)
        rest = keras.Model(conv.output, model.output, name=f"{model.name}_rest")
    except ValueError:
        return model
    filters = conv.filters
    inp = keras.Input(inputs[0].shape[1:], dtype=inputs[0].dtype, name=inputs[0].name)
    copies = layers.Conv2D(filters, 1, use_bias=False, name=f"{conv.name}_copies")
    dw = layers.DepthwiseConv2D(conv.kernel_size, strides=conv.strides, padding=conv.padding,
                                dilation_rate=conv.dilation_rate, use_bias=conv.use_bias,
                                activation=conv.activation, name=f"{conv.name}_dw")
    x = dw(copies(inp))
    copies.set_weights([np.ones((1, 1, 1, filters), np.float32)])
    kernel = conv.get_weights()[0]  # (kh, kw, 1, filters) -> depthwise (kh, kw, filters, 1)
    dw.set_weights([kernel.reshape(kernel.shape[0], kernel.shape[1], filters, 1), *conv.get_weights()[1:]])
    return keras.Model(inp, rest(x), name=model.name)


def _as_is(model):
    return model


def _converter(ctx, rewrite=_as_is):
    import tensorflow as tf
    return tf.lite.TFLiteConverter.from_keras_model(_fixed_batch(rewrite(ctx.unrolled_model())))


def _representative(ctx):
    calib = ctx.calibration()

    def gen():
        for i in range(len(calib)):
            yield [calib[i:i + 1]]
    return gen


def convert_fp32(ctx) -> bytes:
    return _converter(ctx).convert()


def _full_integer(ctx, ops, io_type, rewrite=_as_is) -> bytes:
    """Calibrated post-training quantization with integer input/output tensors."""
    import tensorflow as tf
    conv = _converter(ctx, rewrite)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative(ctx)
    conv.target_spec.supported_ops = [ops]
    conv.inference_input_type = io_type
    conv.inference_output_type = io_type
    return conv.convert()


def convert_int8(ctx) -> bytes:
    """Full integer: int8 weights and activations, int8 input and output tensors. The model that runs
    where int8 dot products are missing gets ``first_conv_as_depthwise`` (13 % fewer instructions on
    AVX2; 5 % slower with VNNI, so the dense model keeps its conv)."""
    import tensorflow as tf

    from edge_runtime.packaged import for_cpus_without_int8_dot
    rewrite = first_conv_as_depthwise if for_cpus_without_int8_dot(ctx.model_name) else _as_is
    return _full_integer(ctx, tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.int8, rewrite=rewrite)


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
