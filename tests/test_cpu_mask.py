"""benchmarks --mask-cpu avx2: a process that sees an AVX2-only x86 through CPUID (timings for CPUs
without int8 dot products on a host that has them)."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import cpu_mask

from edge_runtime.cpu import cpu_flags

from .conftest import REPO

CAN_FAULT = "cpuid_fault" in cpu_flags()
CV_CPU_AVX2, CV_CPU_AVX_512F = 11, 13  # OpenCV's cv::CpuFeatures ids (not exported to Python)


def _masked(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LD_PRELOAD=str(cpu_mask.build()), **{cpu_mask.ENV: "avx2"})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)


@pytest.mark.skipif(not CAN_FAULT, reason="covered by test_a_host_without_cpuid_faulting_is_told_so")
def test_the_masked_process_sees_avx2_but_no_avx512_vnni_or_amx_in_every_thread():
    r = _masked(
        "import threading, json, cv2\n"
        "from benchmarks import cpu_mask\n"
        "out = {'active': cpu_mask.active(), 'main': cpu_mask.cpuid(7, 0), 'sub1': cpu_mask.cpuid(7, 1)}\n"
        "t = threading.Thread(target=lambda: out.update(thread=cpu_mask.cpuid(7, 0))); t.start(); t.join()\n"
        f"out['cv2'] = [cv2.checkHardwareSupport({CV_CPU_AVX2}), cv2.checkHardwareSupport({CV_CPU_AVX_512F})]\n"
        "print(json.dumps(out))\n")
    assert r.returncode == 0, r.stderr[-1500:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["active"] == "avx2"
    for regs in (out["main"], out["thread"]):
        _, ebx, ecx, edx = regs
        assert ebx & (1 << 5), "AVX2 must stay visible"
        assert not ebx & (1 << 16) and not ecx & (1 << 11), "AVX-512F / AVX512-VNNI must be hidden"
        assert not edx & ((1 << 22) | (1 << 24) | (1 << 25)), "AMX must be hidden"
    assert not out["sub1"][0] & (1 << 4), "AVX-VNNI must be hidden"
    # a real consumer of CPUID, OpenCV's dispatcher, sees the same AVX2-only CPU
    assert out["cv2"] == [True, False]


@pytest.mark.skipif(not CAN_FAULT, reason="covered by test_a_host_without_cpuid_faulting_is_told_so")
def test_the_shim_takes_only_cpuid_s_faults():
    """A SIGSEGV that is not CPUID's (sent with kill, or a real fault) still kills the process."""
    r = _masked("import os, signal; os.kill(os.getpid(), signal.SIGSEGV); print('survived')")
    assert r.returncode == -11 and "survived" not in r.stdout
    r = _masked("import ctypes; ctypes.string_at(0); print('survived')")
    assert r.returncode == -11 and "survived" not in r.stdout


@pytest.mark.skipif(not CAN_FAULT, reason="covered by test_a_host_without_cpuid_faulting_is_told_so")
def test_a_claimed_mask_without_the_shim_is_an_error_not_an_unmasked_timing():
    env = dict(os.environ, **{cpu_mask.ENV: "avx2"})
    env.pop("LD_PRELOAD", None)
    r = subprocess.run([sys.executable, "-c", "from benchmarks import cpu_mask; cpu_mask.active()"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode != 0 and "shim is not loaded" in r.stderr


@pytest.mark.skipif(CAN_FAULT, reason="this host can fault on CPUID: the masking tests run instead")
def test_a_host_without_cpuid_faulting_is_told_so():
    with pytest.raises(cpu_mask.CpuMaskError, match="cpuid_fault|x86_64"):
        cpu_mask.build()


@pytest.mark.skipif(not CAN_FAULT, reason="covered by test_a_host_without_cpuid_faulting_is_told_so")
def test_the_benchmark_under_the_mask_says_so_in_its_machine_header(tiny_artifacts, tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--artifacts", str(tiny_artifacts),
                        "--formats", "tflite-int8", "--threads", "1", "--mask-cpu", "avx2", "--json", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-1500:]
    mi = json.loads(out.read_text())["machine"]
    assert mi["cpu_mask"] == "avx2" and mi["int8_dot_products"] == []
    assert not any(cpu_mask.MASKS["avx2"].search(f) for f in mi["cpu_flags"])
    assert "no int8 dot products" in mi["cpu_class"] and "CPUID masked to avx2" in r.stdout
