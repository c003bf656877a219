"""benchmarks.instructions: valgrind's virtual CPU runs the packaged models on AVX2 kernels, and the
counts say what the MACs say (the light model costs fewer instructions than the default)."""
import subprocess
import sys

import pytest

from benchmarks.instructions import InstructionError, kernel_isas

from .conftest import REPO

pytestmark = pytest.mark.slow  # a few valgrind runs


def test_the_packaged_models_run_avx2_kernels_under_valgrind_and_the_light_one_costs_less(tmp_path):
    md = tmp_path / "instr.md"
    r = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "edge_runtime/models/cbilstm-lite",
                        "edge_runtime/models/cbilstm", "--invokes", "5", "--md", str(md)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln.split("|")[1:-1] for ln in md.read_text().splitlines() if ln.startswith("| cbilstm")]
    per_face = {name.strip().split()[0]: float(instr) for name, _, _, instr, _ in rows}
    assert set(per_face) == {"cbilstm-lite", "cbilstm"}
    assert 0.5 < per_face["cbilstm-lite"] < per_face["cbilstm"] / 2  # 8.3 M against 50.8 M MACs
    assert "avx2" in md.read_text().splitlines()[0]


def test_a_kernel_beyond_avx2_is_refused():
    assert kernel_isas(["xnn_qs8_qc8w_gemm_minmax_fp32_ukernel_3x8c8__avx2"]) == ["avx2"]
    for bad in ("xnn_qs8_qc8w_gemm_minmax_fp32_ukernel_7x16c4__avx512vnni", "xnn_f32_gemm__avx512f"):
        with pytest.raises(InstructionError, match="AVX2-only"):
            kernel_isas([bad])


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.instructions", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("python -m benchmarks.instructions: error:")


def test_the_count_repeats_to_within_a_thousandth():
    from benchmarks.instructions import count, tflite_file
    _, path = tflite_file(str(REPO / "edge_runtime/models/cbilstm-lite"))
    first, second = count(path, invokes=3)["instructions"], count(path, invokes=3)["instructions"]
    assert abs(first - second) / first < 1e-3, (first, second)  # start-up noise once swamped this
