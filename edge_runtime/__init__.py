"""Edge runtime: the device-side truths (labels, preprocessing, manifest) and the daemon.

Imports numpy and OpenCV only; never TensorFlow. ``train``, ``export`` and ``benchmarks``
import the label list, preprocessing and manifest schema from here.
"""
