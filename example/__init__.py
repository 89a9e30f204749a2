"""A tiny Django project exercising keepalive_mw (integration tests, benchmark, demo).

Everything is driven by environment variables; see ``example/settings.py``.
"""
