"""Export: a trained run folder -> TFLite and ONNX artifacts (fp32, int8), gated on the test split.

``python -m export --int8`` converts in a worker process (TensorFlow lives only there, so a
converter crash costs one format, not the export), evaluates every artifact through the
device's own backends (``edge_runtime.backends``), gates it against the Keras reference and
commits files + ``manifest.json`` atomically. See ``python -m export --help``.
"""
