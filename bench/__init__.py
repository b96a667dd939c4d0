"""Reproducible speed and memory benchmark of the translation service.

Run ``python bench/run.py`` from the repository root; it writes
``BENCHMARKS.md`` and a chart beside it.
"""
