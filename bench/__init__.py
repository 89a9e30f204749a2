"""Benchmark of keepalive_mw against Django's own connection handling: ``python bench/run.py``."""
