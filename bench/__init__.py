"""Benchmarks: the gateway against bare Starlette baselines, measured in the same run.

Run everything with `python -m bench`; see bench/README.md.
"""
