"""Benchmarks: accuracy, size, latency and throughput of every exported artifact and a peer model,
measured through the very backends (and daemon) the device runs."""
