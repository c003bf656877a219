"""Multiply-accumulates per face, counted from an artifact's own graph (TFLite or ONNX).

Timing depends on the CPU (int8 is fast only with int8 dot products); the count does not, so
it is how a model's cost is compared across machines. Counted: convolutions (grouped and
depthwise included), fully-connected layers, matrix products and LSTM gates (ONNX's fused LSTM
ops; an unrolled TFLite LSTM is its fully-connected ops). Not counted: element-wise ops,
activations, pooling, softmax - a few percent of these models' work, and not multiply-accumulates.
Shapes are read at batch 1 (TFLite: the tensors' static shapes; ONNX: one run on a zero input,
since a reshape's output shape is only known when it runs).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

# TFLite op -> how its MACs follow from (input shapes, output shapes)
_TFLITE_COUNTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "CONV_3D", "TRANSPOSE_CONV")
_ONNX_CONV = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # op -> index of its weight input
_ONNX_MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}  # op -> (A, B) inputs
_ONNX_LSTM = ("LSTM", "DynamicQuantizeLSTM")


class MacError(ValueError):
    pass


def _prod(shape) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) if len(shape) else 1


def _tflite_op(op: str, ins: list, outs: list) -> int:
    out = outs[0]
    if op == "CONV_2D":  # filter [out_c, kh, kw, in_c / groups]
        return _prod(out) * _prod(ins[1][1:])
    if op == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out_c]: one input channel per output channel
        return _prod(out) * int(ins[1][1]) * int(ins[1][2])
    if op == "CONV_3D":  # filter [kd, kh, kw, in_c, out_c]
        return _prod(out) * _prod(ins[1][:-1])
    if op == "TRANSPOSE_CONV":  # inputs: output_shape, filter [out_c, kh, kw, in_c], input
        return _prod(ins[2]) * _prod(ins[1])
    if op == "FULLY_CONNECTED":  # weights [units, in]: every output element is an in-long dot product
        return _prod(out) * int(ins[1][-1])
    if op == "BATCH_MATMUL":
        return _prod(out) * int(ins[0][-1])
    raise MacError(f"no MAC rule for {op}")


def count_tflite(model: str | Path | bytes) -> dict:
    """-> {"macs": total, "by_op": {op: macs}} per face (the graph's batch is 1)."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=model) if isinstance(model, bytes) else Interpreter(model_path=str(model))
    shapes = {t["index"]: t["shape"].tolist() for t in it.get_tensor_details()}
    batch = _batch(shapes[it.get_input_details()[0]["index"]])
    by_op: dict[str, int] = defaultdict(int)
    for op in it._get_ops_details():  # noqa: SLF001 - LiteRT's only public view of the op list
        name = op["op_name"]
        if name in _TFLITE_COUNTED:
            ins = [shapes[i] if i >= 0 else [] for i in op["inputs"]]
            by_op[name] += _tflite_op(name, ins, [shapes[i] for i in op["outputs"]])
    return _result(by_op, batch)


def _batch(shape) -> int:
    return max(1, int(shape[0])) if len(shape) else 1


def _result(by_op: dict, batch: int) -> dict:
    by_op = {k: v // batch for k, v in sorted(by_op.items())}
    return {"macs": sum(by_op.values()), "by_op": by_op}


def _onnx_shapes(model) -> dict[str, list[int]]:
    """Every tensor's shape at batch 1: run the graph once on zeros with every node output exposed."""
    import onnx
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    feeds = {}
    dtype = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
        if t.elem_type not in dtype:
            raise MacError(f"ONNX input {inp.name!r} has an element type this counter does not feed")
        feeds[inp.name] = np.zeros(dims, dtype[t.elem_type])
    known = {o.name for o in m.graph.output}
    names = [o for n in m.graph.node for o in n.output if o and o not in known]
    m.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the graph as written
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    values = sess.run(outs, feeds)
    shapes = {n: list(np.shape(v)) for n, v in zip(outs, values)}
    shapes.update({k: list(v.shape) for k, v in feeds.items()})
    shapes.update({i.name: list(i.dims) for i in m.graph.initializer})
    return shapes


def count_onnx(model: str | Path | bytes) -> dict:
    """-> {"macs": total, "by_op": {op: macs}} per face (the graph run at batch 1)."""
    import onnx
    from onnx import helper
    m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    shapes = _onnx_shapes(m)
    first = next(i.name for i in m.graph.input if i.name not in {x.name for x in m.graph.initializer})
    batch = _batch(shapes[first])
    by_op: dict[str, int] = defaultdict(int)
    for n in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type in _ONNX_CONV:  # weight [M, C / group, kh, kw]; output [N, M, oh, ow]
            w = shapes[n.input[_ONNX_CONV[n.op_type]]]
            by_op[n.op_type] += _prod(shapes[n.output[0]]) * _prod(w[1:])
        elif n.op_type in _ONNX_MATMUL:
            a = shapes[n.input[_ONNX_MATMUL[n.op_type][0]]]
            by_op[n.op_type] += _prod(shapes[n.output[0]]) * int(a[-1])
        elif n.op_type == "Gemm":
            a = shapes[n.input[0]]
            by_op[n.op_type] += _prod(shapes[n.output[0]]) * int(a[0] if attrs.get("transA") else a[-1])
        elif n.op_type in _ONNX_LSTM:  # X [seq, batch, input]; 4 gates, each over [x_t, h_(t-1)]
            seq, b, size = shapes[n.input[0]]
            hidden = int(attrs["hidden_size"])
            dirs = 2 if attrs.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
            by_op[n.op_type] += seq * b * dirs * 4 * hidden * (size + hidden)
    return _result(by_op, batch)


def count(path: str | Path) -> dict:
    """MACs per face of a .tflite or .onnx file."""
    suffix = Path(path).suffix
    if suffix == ".tflite":
        return count_tflite(path)
    if suffix == ".onnx":
        return count_onnx(path)
    raise MacError(f"cannot count MACs in {Path(path).name}: a .tflite or .onnx file is needed")
