"""Benchmarks (not tests). Run them from the repository root, e.g. ``python bench/rotate.py``."""
