"""Shared library code of the translation service: one module per concept."""
