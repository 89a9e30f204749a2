"""The benchmark's matrix: the variants (how the example project handles connections), the
servers that serve it, and the view they serve."""

from __future__ import annotations

# name -> (label, example env overrides, uses pgbouncer)
VARIANTS = {
    "default": ("Django default (CONN_MAX_AGE=0)", {"EXAMPLE_VARIANT": "default"}, False),
    "conn_max_age": ("CONN_MAX_AGE=600", {"EXAMPLE_VARIANT": "conn_max_age"}, False),
    "conn_max_age_checks": ("CONN_MAX_AGE=600 + CONN_HEALTH_CHECKS",
                            {"EXAMPLE_VARIANT": "conn_max_age_checks"}, False),
    "pool": ("Django native pool (psycopg_pool)", {"EXAMPLE_VARIANT": "pool"}, False),
    "pgbouncer": ("PgBouncer transaction mode (CONN_MAX_AGE=0)",
                  {"EXAMPLE_VARIANT": "default", "EXAMPLE_DISABLE_SERVER_SIDE_CURSORS": "1"}, True),
    "keepalive": ("keepalive_mw (defaults, health checks on)", {"EXAMPLE_VARIANT": "keepalive"}, False),
}
REFERENCE = "keepalive"

# name -> (label, harness kind, workers, threads, clients)
SERVERS = {
    "sync": ("gunicorn sync", "sync", 2, 1, 4),
    "gthread": ("gunicorn gthread", "gthread", 2, 4, 8),
    "uvicorn": ("uvicorn", "uvicorn", 2, 1, 8),
    "gevent": ("gunicorn gevent", "gevent", 2, 1, 8),
}

# Variants expected to leak server connections under a server: run short (a finding).
# Under ASGI every request runs on a new thread, under gevent every HTTP connection in a new
# greenlet: Django's persistent connections belong to the thread/greenlet and pile up.
LEAKY = {(v, s) for v in ("conn_max_age", "conn_max_age_checks") for s in ("uvicorn", "gevent")}
PATH = "/"
SEED_ROWS = 100


def _db(variant: str) -> str:
    return f"bench_{variant}"
