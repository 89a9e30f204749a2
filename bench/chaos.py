"""Chaos run: faults under load. Per server × variant × fault, a fresh server of the example
project serves the fast view to 8 clients for ``--chaos-duration`` seconds (default 12) and,
in the middle, the fault strikes:

- ``restart``: ``pg_ctl restart -m fast`` of the throwaway cluster (every session ends, and
  for a moment nothing accepts connections);
- ``terminate``: ``pg_terminate_backend`` of every session of the database;
- ``pgbouncer_restart``: PgBouncer stopped (immediate shutdown) and started again on the
  same port (through-PgBouncer variants only).

Figures per cell: requests, failed requests (non-2xx/3xx + socket errors), the longest
request (the cost of waiting instead of failing), p99, and how long the fault took. Load
from the Python client: unlike wrk it waits for the requests in flight when the time is up,
so a request stalled by the fault at the end still counts (answered late, or failed at its
10 s timeout).
PgBouncer runs with ``PGBOUNCER_SETTINGS`` (``--chaos-pgbouncer`` to try others).
"""

from __future__ import annotations

import concurrent.futures
import time

from bench.matrix import LEAKY, PATH, SERVERS, VARIANTS

VARIANTS_RUN = ("keepalive", "keepalive_pgbouncer", "pool", "conn_max_age_checks", "pgbouncer")
SERVERS_RUN = ("sync", "uvicorn")
CLIENTS = 8
DURATION = 12.0
DB = "bench_chaos"
FAULTS = {
    "restart": "PostgreSQL fast restart",
    "terminate": "pg_terminate_backend of every session",
    "pgbouncer_restart": "PgBouncer restart",
}
# Chosen with short runs (4 s, gunicorn sync, 8 clients) of a PostgreSQL restart (~0.23 s)
# behind PgBouncer 1.18, failed requests of keepalive_mw / plain Django through it: after a
# failed server login PgBouncer fails every query that finds no server connection ("server
# login has been failing") until server_login_retry has passed. Default (15 s): 8 / 261, the
# 8 clients stalled to their 10 s timeout; 1 s: 0–128 / 88–120; 0.5 s: 0–63 / 0–54; 0.2 s:
# 0–25 / 0–27; 0 (retry at once): 0–16 / 0–15, longest request under 0.5 s. server_check_delay
# = 0, server_connect_timeout = 1 and query_wait_timeout = 2 changed nothing for the better.
PGBOUNCER_SETTINGS = {"server_login_retry": "0"}


def add_arguments(p) -> None:
    p.add_argument("--chaos-duration", type=float, default=DURATION,
                   help=f"seconds of load per chaos cell, the fault in the middle (default {DURATION:g})")
    p.add_argument("--chaos-variants", help="comma-separated subset of " + ",".join(VARIANTS_RUN))
    p.add_argument("--chaos-servers", help="comma-separated subset of " + ",".join(SERVERS_RUN))
    p.add_argument("--chaos-faults", help="comma-separated subset of " + ",".join(FAULTS))
    p.add_argument("--chaos-pgbouncer", metavar="KEY=VALUE,...",
                   help="PgBouncer settings of the chaos run (default: "
                        + ",".join(f"{k}={v}" for k, v in PGBOUNCER_SETTINGS.items())
                        + "; an empty string: PgBouncer's defaults)")


def check_arguments(p, args) -> None:
    def subset(value, known, what):
        chosen = [v.strip() for v in value.split(",")] if value else list(known)
        for item in chosen:
            if item not in known:
                p.error(f"unknown chaos {what} {item!r}; choose from {', '.join(known)}")
        return chosen

    args.chaos_variants = subset(args.chaos_variants, VARIANTS_RUN, "variant")
    args.chaos_servers = subset(args.chaos_servers, SERVERS_RUN, "server")
    args.chaos_faults = subset(args.chaos_faults, FAULTS, "fault")
    if args.chaos_pgbouncer is None:
        args.chaos_pgbouncer = dict(PGBOUNCER_SETTINGS)
    else:
        pairs = [item.split("=", 1) for item in args.chaos_pgbouncer.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            p.error("--chaos-pgbouncer takes KEY=VALUE pairs separated by commas")
        args.chaos_pgbouncer = {k.strip(): v.strip() for k, v in pairs}


def plan(variants, servers, faults) -> list:
    """(server, variant, fault) of every cell. PgBouncer restarts only where there is one;
    CONN_MAX_AGE variants not under ASGI/gevent, where they leak (see the matrix)."""
    return [(s, v, f) for s in servers for v in variants for f in faults
            if (v, s) not in LEAKY and (f != "pgbouncer_restart" or VARIANTS[v][2])]


def run(bench, args, log) -> dict:
    cells = plan(args.chaos_variants, args.chaos_servers, args.chaos_faults)
    bench.prepare_database(DB, bench.example_env(DB, "kamw-bench-chaos", {}, bench.cluster.port))
    out = {"config": {"duration": args.chaos_duration, "clients": CLIENTS, "path": PATH,
                      "pgbouncer_settings": args.chaos_pgbouncer, "variants": args.chaos_variants,
                      "servers": args.chaos_servers, "faults": args.chaos_faults},
           "runs": [], "failures": []}
    for n, (server, variant, fault) in enumerate(cells, 1):
        what = f"chaos {n}/{len(cells)} {SERVERS[server][0]:14} {variant:20} {fault:17}"
        try:
            result = run_cell(bench, server, variant, fault, args.chaos_duration,
                              args.chaos_pgbouncer)
        except Exception as exc:  # noqa: BLE001 - reported, the other cells go on
            out["failures"].append({"server": server, "variant": variant, "fault": fault,
                                    "error": f"{type(exc).__name__}: {exc}"[:3000]})
            log(f"{what} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        out["runs"].append(result)
        log(f"{what} {result['requests']:6} requests  failed {result['failed']:4}  "
            f"max {result['max_ms']:7.1f} ms  fault {result['fault_s']:.2f} s  ({result['wall_s']} s)")
    return out


def run_cell(bench, server: str, variant: str, fault: str, duration: float, settings: dict) -> dict:
    from bench import load

    t_start = time.monotonic()
    with bench.database_port(DB, VARIANTS[variant][2], settings=settings) as (port, bouncer), \
            bench.serve(server, bench.example_env(DB, f"kamw-bench-chaos-{variant}",
                                                  VARIANTS[variant][1], port)) as srv:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(load.run, srv.port, PATH, clients=CLIENTS, duration=duration,
                                 python=True)
            time.sleep(duration / 2)
            t_fault = time.monotonic()
            if fault == "restart":
                bench.cluster.restart()
            elif fault == "terminate":
                bench.cluster.terminate(DB)
            else:
                bouncer.restart()
            fault_s = time.monotonic() - t_fault
            stats = future.result()
    return {
        "server": server, "variant": variant, "fault": fault, "clients": CLIENTS,
        "pgbouncer_settings": settings if bouncer is not None else None,
        **stats,
        "failed": stats["non_2xx_3xx"] + stats["socket_errors"],
        "fault_s": round(fault_s, 3),
        "server_tracebacks": srv.log.count("Traceback (most recent call last)"),
        "wall_s": round(time.monotonic() - t_start, 2),
    }
