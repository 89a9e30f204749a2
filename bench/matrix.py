"""The benchmark's matrix: the variants (how the example project handles connections), the
servers that serve it, and the views they serve."""

from __future__ import annotations

from typing import NamedTuple

from bench.pg import VIEW_MARKER

_THROUGH_PGBOUNCER = {"EXAMPLE_DISABLE_SERVER_SIDE_CURSORS": "1"}  # transaction mode needs it

# name -> (label, example env overrides, uses pgbouncer)
VARIANTS = {
    "default": ("Django default (CONN_MAX_AGE=0)", {"EXAMPLE_VARIANT": "default"}, False),
    "conn_max_age": ("CONN_MAX_AGE=600", {"EXAMPLE_VARIANT": "conn_max_age"}, False),
    "conn_max_age_checks": ("CONN_MAX_AGE=600 + CONN_HEALTH_CHECKS",
                            {"EXAMPLE_VARIANT": "conn_max_age_checks"}, False),
    "pool": ("Django native pool (psycopg_pool)", {"EXAMPLE_VARIANT": "pool"}, False),
    "pgbouncer": ("PgBouncer transaction mode (CONN_MAX_AGE=0)",
                  {"EXAMPLE_VARIANT": "default", **_THROUGH_PGBOUNCER}, True),
    "keepalive_pgbouncer": ("keepalive_mw through PgBouncer (transaction mode)",
                            {"EXAMPLE_VARIANT": "keepalive", "KEEPALIVE_POOLER": '"transaction"',
                             **_THROUGH_PGBOUNCER}, True),
    # Sessions follow in-flight queries; a bound of 4 per process (8 for the 2 workers).
    "keepalive_tx": ("keepalive_mw, RELEASE \"transaction\", MAX_CONNECTIONS 4",
                     {"EXAMPLE_VARIANT": "keepalive", "KEEPALIVE_RELEASE": '"transaction"',
                      "KEEPALIVE_MAX_CONNECTIONS": "4"}, False),
    "keepalive": ("keepalive_mw (defaults, health checks on)", {"EXAMPLE_VARIANT": "keepalive"}, False),
}
REFERENCE = "keepalive"
PGBOUNCER_VARIANTS = tuple(v for v, spec in VARIANTS.items() if spec[2])

# name -> (label, harness kind, workers, threads, clients)
SERVERS = {
    "sync": ("gunicorn sync", "sync", 2, 1, 4),
    "gthread": ("gunicorn gthread", "gthread", 2, 4, 8),
    "uvicorn": ("uvicorn", "uvicorn", 2, 1, 8),
    "gevent": ("gunicorn gevent", "gevent", 2, 1, 8),
}


class View(NamedTuple):
    label: str
    path: str
    statements: int  # the view's own statements per request
    # A statement the view runs once per request (as pg_stat_statements shows it): its calls
    # are the requests the server counts as served.
    marker: str
    servers: dict | None = None  # server -> clients; None: every server, with its SERVERS clients


VIEWS = {
    "fast": View("three small queries", "/", 3, VIEW_MARKER),
    # Requests hold what they took for the first query while they wait: sessions per
    # request/s is what this view shows (a later mode that gives a connection back between
    # queries is measured on it too: add its variant to SLOW_VARIANTS). Served: the last
    # query's calls (requests still waiting when the load stops never run it).
    "slow": View("async view: a query, 100 ms await (an external API call), a query", "/slow/", 2,
                 'SELECT "shop_row"."id" AS "id" FROM "shop_row" ORDER BY 1 DESC LIMIT',
                 {"uvicorn": 64}),
    # The same queries in a sync view that sleeps: threads (gthread) and greenlets (gevent)
    # hold what they took while they wait, as async views do.
    "slow_sync": View("sync view: a query, 100 ms sleep (an external API call), a query",
                      "/slow-sync/", 2,
                      'SELECT "shop_row"."id" AS "id" FROM "shop_row" ORDER BY 1 DESC LIMIT',
                      {"gthread": 16, "gevent": 64}),
}
# Variants served on the slow views. Not CONN_MAX_AGE: under ASGI it leaks (see LEAKY),
# 64 clients would only show "too many clients".
SLOW_VARIANTS = ("default", "pool", "pgbouncer", "keepalive_pgbouncer", "keepalive_tx", "keepalive")

# Variants expected to leak server connections under a server: run short (a finding).
# Under ASGI every request runs on a new thread, under gevent every HTTP connection in a new
# greenlet: Django's persistent connections belong to the thread/greenlet and pile up.
LEAKY = {(v, s) for v in ("conn_max_age", "conn_max_age_checks") for s in ("uvicorn", "gevent")}
PATH = VIEWS["fast"].path
SEED_ROWS = 100


def _db(variant: str) -> str:
    return f"bench_{variant}"


SLOW_VIEWS = ("slow", "slow_sync")


def cells(variants, servers, slow_variants) -> list:
    """One round's cells, (variant, server, view): the fast view on every server, then the
    slow views on theirs."""
    out = [(v, s, "fast") for s in servers for v in variants]
    for view in SLOW_VIEWS:
        for server in VIEWS[view].servers:
            out += [(v, server, view) for v in slow_variants]
    return out


def clients(server: str, view: str) -> int:
    return (VIEWS[view].servers or {}).get(server) or SERVERS[server][4]
