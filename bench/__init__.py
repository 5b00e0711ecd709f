"""Benchmarks (not tests): `make bench` runs `python -m bench.ingest_bench`."""
