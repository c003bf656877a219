"""What the CPU can do fast, read once from /proc/cpuinfo: the one place these flag names live.

int8 dot products decide whether an int8 model is fast (x86 VNNI, Arm's dotprod): without them
int8 convolutions run about as fast as float, so a model's multiply-accumulate count decides its
speed. Native bf16 decides whether training in bf16 beats float32.
"""
from __future__ import annotations

import platform
from functools import lru_cache

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")  # x86 VNNI / AMX; Arm dotprod
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 / AMX; Arm BF16
# the features that decide int8 and bf16 speed, shown in every benchmark's machine header
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
               "asimd", "asimddp", "i8mm", "bf16", "sve")


@lru_cache(maxsize=None)
def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, frozenset]:
    name, flags = "", frozenset()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not name:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return name or platform.processor(), flags


def cpu_name(path: str = "/proc/cpuinfo") -> str:
    return _cpuinfo(path)[0]


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset:
    return _cpuinfo(path)[1]


def int8_dot_flags(path: str = "/proc/cpuinfo") -> list[str]:
    """The int8 dot-product features this CPU has ([] = int8 is no faster than float here)."""
    return [f for f in INT8_DOT_FLAGS if f in cpu_flags(path)]


def has_int8_dot(path: str = "/proc/cpuinfo") -> bool:
    return bool(int8_dot_flags(path))


def has_native_bf16(path: str = "/proc/cpuinfo") -> bool:
    return bool(set(BF16_FLAGS) & cpu_flags(path))


def cpu_class(path: str = "/proc/cpuinfo") -> str:
    """One phrase naming the class a timing came from, e.g. 'x86_64, int8 dot products (avx512_vnni)'."""
    dots = int8_dot_flags(path)
    return f"{platform.machine()}, " + (f"int8 dot products ({', '.join(dots)})" if dots
                                        else "no int8 dot products")
