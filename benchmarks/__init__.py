"""Benchmark suite of flagmetrics: `python -m benchmarks` (see benchmarks/README.md)."""
