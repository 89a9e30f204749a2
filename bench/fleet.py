"""Fleet run: several servers of the example project with keepalive_mw (defaults) sharing one
database, loaded all at once, first all through ONE PgBouncer (transaction mode,
``default_pool_size`` 6), then straight to PostgreSQL.

The fleet: 3 gunicorn masters × 2 sync workers and 1 uvicorn with 2 workers (8 processes).
Load: one ``wrk`` per server, all at once, with the matrix's clients for that server
(gunicorn sync 4, uvicorn 8: 20 in all; more would only queue in the accept backlogs of a
2-core machine). Figures per mode: total requests/s (sum over the servers), failed requests
(non-2xx/3xx + socket errors), the longest request, server sessions at peak
(pg_stat_activity sampled every 50 ms) and after the load, and each server's requests/s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time

from bench.matrix import PATH, SERVERS, VARIANTS

FLEET = ("sync", "sync", "sync", "uvicorn")  # one entry per server (master)
POOL_SIZE = 6
DB = "bench_fleet"
# mode -> (label, variant of bench.matrix whose settings the servers run)
MODES = {
    "pgbouncer": (f"through one PgBouncer (transaction mode, default_pool_size {POOL_SIZE})",
                  "keepalive_pgbouncer"),
    "direct": ("straight to PostgreSQL", "keepalive"),
}


def describe(servers=FLEET, short: bool = False) -> str:
    """"3 × gunicorn sync (2 workers, 4 clients) + 1 × uvicorn (2 workers, 8 clients)"."""
    return " + ".join(f"{servers.count(s)} × {SERVERS[s][0]}"
                      + ("" if short else f" ({SERVERS[s][2]} workers, {SERVERS[s][4]} clients)")
                      for s in dict.fromkeys(servers))


def run(bench, duration: float, log, modes=tuple(MODES)) -> dict:
    """Both modes, one after the other; a mode that fails is recorded and the other goes on."""
    bench.prepare_database(DB, bench.example_env(DB, "kamw-bench-fleet", {}, bench.cluster.port))
    out = {"config": {"servers": list(FLEET), "describe": describe(), "pool_size": POOL_SIZE,
                      "duration": duration, "path": PATH,
                      "clients": sum(SERVERS[s][4] for s in FLEET)},
           "runs": [], "failures": []}
    for mode in modes:
        try:
            result = run_mode(bench, mode, duration)
        except Exception as exc:  # noqa: BLE001 - reported, the other mode goes on
            out["failures"].append({"mode": mode, "error": f"{type(exc).__name__}: {exc}"[:3000]})
            log(f"fleet {mode:10} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        out["runs"].append(result)
        log(f"fleet {mode:10} {result['rps']:7.0f} req/s  errors {result['errors']:4}  "
            f"max {result['max_ms']:7.1f} ms  conns {result['conns_peak']:3}/{result['conns_after']:3}"
            f"  ({result['wall_s']} s)")
    return out


def run_mode(bench, mode: str, duration: float) -> dict:
    from bench import load, pg

    variant = MODES[mode][1]
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        port, _bouncer = stack.enter_context(
            bench.database_port(DB, VARIANTS[variant][2], pool_size=POOL_SIZE))
        servers = [stack.enter_context(bench.serve(
            server, bench.example_env(DB, f"kamw-bench-fleet-{n}", VARIANTS[variant][1], port)))
            for n, server in enumerate(FLEET)]
        sampler = pg.ActivitySampler(bench.cluster, DB).start()
        stack.callback(sampler.close)
        with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
            futures = [pool.submit(load.run, srv.port, PATH, clients=SERVERS[server][4],
                                   duration=duration) for server, srv in zip(FLEET, servers)]
            stats = [f.result() for f in futures]
        time.sleep(bench.args.after_delay)
        sampler.stop()
        with bench.cluster.connect() as conn:
            after = pg.client_sessions(conn, DB)
    if sampler.error is not None:
        raise RuntimeError(f"pg_stat_activity sampler failed: {sampler.error!r}")
    return {
        "mode": mode, "variant": variant, "pool_size": POOL_SIZE if VARIANTS[variant][2] else None,
        "rps": sum(s["rps"] for s in stats),
        "requests": sum(s["requests"] for s in stats),
        "errors": sum(s["non_2xx_3xx"] + s["socket_errors"] for s in stats),
        "max_ms": max(s["max_ms"] for s in stats),
        "p99_ms": max(s["p99_ms"] for s in stats),
        "conns_peak": sampler.peak, "conns_after": after, "samples": sampler.samples,
        "server_tracebacks": sum(srv.log.count("Traceback (most recent call last)") for srv in servers),
        "servers": [{"server": server, "clients": SERVERS[server][4], **s}
                    for server, s in zip(FLEET, stats)],
        "wall_s": round(time.monotonic() - t_start, 2),
    }
