"""Make a YuNet ONNX file (fixed 1x3x320x320 input) accept any input size (multiples of 32).

For onnxruntime on the device; weights and operators are left unchanged.

    python -m export.yunet ../shared/models/yunet/yunet_s_320_320.onnx edge_runtime/models/yunet_s.onnx

Its reshapes are already -1-based and its upsampling is by scale, so only the declared shapes change.
Prints the sha256 to pin in ``edge_runtime.detectors.PACKAGED``.
"""
from __future__ import annotations

import argparse

from edge_runtime.manifest import atomic_write_bytes, sha256_file
from edge_runtime.cli import command


def dynamic_size(src: str, dst: str) -> str:
    import onnx
    from google.protobuf.message import DecodeError
    try:
        m = onnx.load(src)
    except DecodeError as e:
        raise ValueError(f"{src} is not an ONNX model ({e})") from None
    outputs = {o.name: len(o.type.tensor_type.shape.dim) for o in m.graph.output}
    dims = m.graph.input[0].type.tensor_type.shape.dim if len(m.graph.input) == 1 else []
    if ([i.name for i in m.graph.input] != ["input"] or len(dims) != 4
            or set(outputs) != {f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)}
            or min(outputs.values()) != 3):
        raise ValueError(f"{src} is not a YuNet model (inputs {[i.name for i in m.graph.input]}, "
                         f"outputs {sorted(outputs)[:3]}…)")
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for out in m.graph.output:
        out.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del m.graph.value_info[:]  # intermediate shapes were inferred for 320x320
    onnx.checker.check_model(m)
    atomic_write_bytes(dst, m.SerializeToString())
    return sha256_file(dst)


@command("python -m export.yunet", bad_input=(OSError, ValueError))
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.yunet", description=__doc__.split("\n")[0])
    p.add_argument("src", help="YuNet .onnx with a fixed input shape")
    p.add_argument("dst", help="output .onnx")
    a = p.parse_args(argv)
    sha = dynamic_size(a.src, a.dst)
    print(f"wrote {a.dst}: source sha256 {sha256_file(a.src)}, output sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
