"""Benchmarks: `make bench` (full, writes docs/BENCHMARKS.md) and `make bench-quick`."""
