"""Reproducible benchmarks of Vivace against its peers (Ray, Dask, multiprocessing).

Run ``python -m benchmarks`` (``uv run --group bench python -m benchmarks``). Each peer runs in its own
subprocess; the driver writes ``benchmarks/results/latest.json`` and renders ``docs/benchmarks.md``.

This package's ``__init__`` stays empty on purpose: Vivace containers import
``benchmarks.vivace_peer`` by name, and that must not pull in the driver or any peer library.
"""
