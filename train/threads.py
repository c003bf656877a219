"""TensorFlow's CPU thread pools, set in one place (training, grid workers, converters, benchmarks)."""
from __future__ import annotations


def tf_threads(n: int | None) -> None:
    """Cap TensorFlow's intra- and inter-op threads at ``n`` (None or 0: TensorFlow's default).
    Only possible before TensorFlow runs its first op; later it keeps its pools."""
    if not n:
        return
    import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # TF already initialised in this process
        pass
