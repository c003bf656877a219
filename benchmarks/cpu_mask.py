"""Time the code an AVX2-only x86 runs, on a host that has AVX-512, VNNI or AMX.

A CPU without int8 dot products (the Raspberry Pi 4's class) is the one the light model is for, and
not every machine has one. Linux can make CPUID fault (`arch_prctl(ARCH_SET_CPUID)`, CPU flag
`cpuid_fault`): `cpu_mask.c`, preloaded into a process, answers every CPUID with the host's own
features minus AVX-512, VNNI and AMX, so XNNPACK, ONNX Runtime and OpenCV pick the kernels an
AVX2-only CPU runs. The cores stay the host's (their caches, clocks and issue width), so a masked
timing is the AVX2 code path on this core, not a Pi: compare ours with the peer within one run.
The kernel's /proc/cpuinfo is not masked, so ``--model auto`` still reads the host's features: name
the artifacts to measure. A process that installs its own SIGSEGV handler (Python's faulthandler)
would take CPUID's faults from the shim, so the child runs without PYTHONFAULTHANDLER.

    python -m benchmarks --artifacts edge_runtime/models/cbilstm-lite --threads 1 --peer fer --mask-cpu avx2
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from edge_runtime.cpu import cpu_flags
from edge_runtime.paths import cache_dir

SOURCE = Path(__file__).with_name("cpu_mask.c")
ENV = "FER_CPU_MASK"  # set in the masked child: which mask it runs under
# mask name -> the CPU flags it hides (the C file clears their CPUID bits)
MASKS = {"avx2": re.compile(r"avx512|vnni|amx", re.I)}


class CpuMaskError(Exception):
    pass


def build() -> Path:
    """The shim, compiled once per source version into the cache."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise CpuMaskError(f"--mask-cpu needs an x86_64 host (this is {platform.machine()})")
    if "cpuid_fault" not in cpu_flags():
        raise CpuMaskError("--mask-cpu needs CPUID faulting (flag cpuid_fault in /proc/cpuinfo); this CPU or "
                           "hypervisor does not offer it: use python -m benchmarks.instructions instead")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise CpuMaskError("--mask-cpu compiles a small C shim: install a C compiler (apt-get install gcc)")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    out = cache_dir("cpu-mask") / f"cpu_mask-{digest}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise CpuMaskError(f"compiling {SOURCE.name} failed: {proc.stderr.strip()[:300]}")
        os.replace(tmp, out)
    return out


def cpuid(leaf: int, sub: int = 0) -> tuple[int, int, int, int] | None:
    """(eax, ebx, ecx, edx) as this process sees CPUID through the shim; None if it is not loaded."""
    try:
        fn = ctypes.CDLL(None).fer_cpuid
    except AttributeError:
        return None
    regs = (ctypes.c_uint32 * 4)()
    fn(ctypes.c_uint32(leaf), ctypes.c_uint32(sub), regs)
    return tuple(regs)


def active() -> str | None:
    """The mask this process runs under, checked: the shim is loaded and CPUID hides what it should.

    Raises CpuMaskError when the environment claims a mask the process does not have (never a
    timing labelled AVX2-only that ran with VNNI)."""
    name = os.environ.get(ENV)
    if not name:
        return None
    regs = cpuid(7, 0)
    if regs is None:
        raise CpuMaskError(f"{ENV}={name} but the CPUID shim is not loaded in this process")
    _, ebx, ecx, _ = regs
    if ebx & (1 << 16) or ecx & (1 << 11):  # avx512f, avx512_vnni
        raise CpuMaskError(f"{ENV}={name} but CPUID still reports AVX-512 or VNNI")
    return name


def hidden_flags(name: str) -> list[str]:
    """The host's flags the mask hides from this process."""
    return sorted(f for f in cpu_flags() if MASKS[name].search(f))


def add_flag(parser) -> None:
    """--mask-cpu, the same words on every command that times (benchmarks, benchmarks.cost)."""
    parser.add_argument("--mask-cpu", choices=sorted(MASKS),
                        help="re-run this command in a child that sees no AVX-512/VNNI/AMX through CPUID (avx2: the "
                             "kernels an AVX2-only x86 without int8 dot products runs, on this host's cores; not a Pi "
                             "timing); x86_64 Linux with CPUID faulting and a C compiler")


def strip_flag(argv: list[str]) -> list[str]:
    """argv without --mask-cpu (the masked child must not mask again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--mask-cpu":
            skip = True
        elif not a.startswith("--mask-cpu="):
            out.append(a)
    return out


def rerun(name: str, module: str, argv: list[str]) -> int:
    """Run ``python -m MODULE ARGV`` (without --mask-cpu) again with the shim preloaded; -> its exit code."""
    if name not in MASKS:
        raise CpuMaskError(f"--mask-cpu must be one of {', '.join(MASKS)} (got {name!r})")
    shim = build()
    env = dict(os.environ, **{ENV: name})
    env["LD_PRELOAD"] = " ".join(p for p in (str(shim), os.environ.get("LD_PRELOAD", "")) if p)
    env.pop("PYTHONFAULTHANDLER", None)  # its SIGSEGV handler would replace the shim's and kill the first CPUID
    rc = subprocess.run([sys.executable, "-m", module, *strip_flag(argv)], env=env).returncode
    return 128 - rc if rc < 0 else rc  # killed by signal N: the shell's 128 + N
