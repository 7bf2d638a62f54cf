"""Benchmarks (not tests): ``python -m bench.step_speed --help``."""
