"""Latency and throughput of one predict function, timed with perf_counter_ns.

Per-face latency is measured at batch 1 after a warm-up, in several rounds; percentiles pool all
rounds and the spread is the range of the per-round medians, so a noisy neighbour shows up.
"""
from __future__ import annotations

import time

import numpy as np


def time_calls(fn, x, warmup: int = 20, rounds: int = 5, min_iters: int = 200,
               min_seconds: float = 0.5) -> dict:
    """Call fn(x) repeatedly; -> percentiles in ms over every call, and the per-round medians."""
    for _ in range(warmup):
        fn(x)
    samples, medians = [], []
    for _ in range(rounds):
        round_ns = []
        t_end = time.perf_counter_ns() + int(min_seconds * 1e9 / rounds)
        while len(round_ns) < max(1, min_iters // rounds) or time.perf_counter_ns() < t_end:
            t0 = time.perf_counter_ns()
            fn(x)
            round_ns.append(time.perf_counter_ns() - t0)
        medians.append(float(np.median(round_ns)) / 1e6)
        samples += round_ns
    ms = np.asarray(samples, np.float64) / 1e6
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "iterations": int(ms.size),
            "round_p50_min_ms": min(medians), "round_p50_max_ms": max(medians)}


def per_face_latency(predict, faces: np.ndarray, **kw) -> dict:
    """Batch-1 latency, cycling through real faces so caches see varied inputs."""
    state = {"i": 0}
    singles = [faces[i:i + 1] for i in range(min(len(faces), 64))]

    def one(_):
        state["i"] = (state["i"] + 1) % len(singles)
        return predict(singles[state["i"]])

    return time_calls(one, None, **kw)


def throughput(predict, faces: np.ndarray, batch: int = 32, **kw) -> dict:
    """Faces per second at a fixed batch size (the median batch time)."""
    reps = int(np.ceil(batch / len(faces)))
    x = np.concatenate([faces] * reps)[:batch]
    t = time_calls(predict, x, **{"warmup": 3, "rounds": 3, "min_iters": 15, "min_seconds": 0.5, **kw})
    return {"batch": batch, "faces_per_s": batch / (t["p50_ms"] / 1e3), "batch_p50_ms": t["p50_ms"]}
