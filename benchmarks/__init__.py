"""Benchmarks: each module here exposes `run(quick: bool) -> list[dict]`; `python -m benchmarks` runs them all."""
