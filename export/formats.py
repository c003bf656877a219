"""The table of export formats: artifact name, file suffix, runtime format, precision, converter.

Converters live in ``export.tflite`` / ``export.onnx`` and run inside the conversion worker
(``export.worker``); each takes a :class:`export.worker.Context` and returns the file's bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.manifest import ARTIFACT_KIND_BY_NAME, REFERENCE  # noqa: F401 - REFERENCE: for the pipeline


@dataclass(frozen=True)
class Format:
    name: str  # artifact name in the manifest
    suffix: str  # file suffix
    format: str  # runtime format: tflite | onnx
    precision: str  # fp32 | int8 | dr (dynamic range: int8 weights, float activations) | int16x8
    tag: str  # file-name tag
    converter: str  # "module:function" run in the worker
    int8: bool = False  # written only with --int8
    extra: bool = False  # written only when asked for by name (--formats) or with --extras
    notes: str = ""


def _made(name: str, suffix: str, tag: str, converter: str, **kw) -> Format:
    """A format of edge_runtime.manifest.ARTIFACT_KINDS (its name, runtime format and precision) and how
    export makes it."""
    kind = ARTIFACT_KIND_BY_NAME[name]
    return Format(kind.name, suffix, kind.format, kind.precision, tag, converter, **kw)


FORMATS: tuple[Format, ...] = (
    _made("tflite-fp32", ".tflite", "fp32", "export.tflite:convert_fp32",
          notes="batch 1, unrolled LSTMs (exact), LiteRT/tflite-runtime"),
    _made("onnx-fp32", ".onnx", "fp32", "export.onnx:convert_fp32",
          notes="opset 17, dynamic batch, ONNX LSTM ops"),
    _made("tflite-int8", ".tflite", "int8", "export.tflite:convert_int8", int8=True,
          notes="full integer 8x8, int8 input/output, unrolled LSTMs, calibrated on train"),
    _made("onnx-int8", ".onnx", "int8", "export.onnx:convert_int8", int8=True,
          notes="static QDQ int8 conv stem + dynamic int8 LSTM/MatMul (onnxruntime)"),
    _made("tflite-dr", ".tflite", "dr", "export.tflite:convert_dynamic_range",
          int8=True, extra=True, notes="int8 weights, float activations and I/O"),
    _made("tflite-int16x8", ".tflite", "int16x8", "export.tflite:convert_int16x8",
          int8=True, extra=True, notes="int16 activations, int8 weights, int16 input/output"),
)
BY_NAME = {f.name: f for f in FORMATS}


def select(int8: bool, names: list[str] | None = None, extras: bool = False) -> list[Format]:
    """The formats to write: fp32 ones, + int8 ones with ``int8``, or exactly ``names``."""
    if names:
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown format(s) {', '.join(unknown)} (choose from {', '.join(BY_NAME)})")
        return [BY_NAME[n] for n in names]
    return [f for f in FORMATS if (int8 or not f.int8) and (extras or not f.extra)]


def converter(fmt: Format):
    import importlib
    mod, fn = fmt.converter.split(":")
    return getattr(importlib.import_module(mod), fn)
