"""Measure a fast restart of PostgreSQL behind PgBouncer under load (README: "Many servers,
one database"). Not a test: the figures depend on the machine, nothing is asserted.

    python -m tests.integration.pgbouncer_outage                     # defaults, then tuned
    python -m tests.integration.pgbouncer_outage '[["session", {"server_login_retry": 1}]]'

Each run: a throwaway cluster, PgBouncer in the given mode and settings, gunicorn (sync, 2
workers) with keepalive_mw, 4 clients sending requests back to back; after RESTART_AT
seconds the cluster restarts (pg_ctl -m fast). Prints the requests, those that failed and
when, the slowest request, and why PgBouncer closed connections (its log). Needs root (the
cluster and PgBouncer run as the postgres OS user).
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections import Counter

from . import servers
from .pgbouncer import PgBouncer

RESTART_AT = 3.0
CLIENTS = 4
RUNS = [  # (mode, PgBouncer settings, seconds)
    ("transaction", {}, 22), ("transaction", {"server_login_retry": 1}, 8),
    ("transaction", {"server_login_retry": 0.25}, 8),
    ("session", {}, 22), ("session", {"server_login_retry": 1}, 8),
    ("session", {"server_login_retry": 0.25}, 8),
]


def _client(port: int, stop: threading.Event, out: list, t0: float) -> None:
    conn = None
    while not stop.is_set():
        start = time.monotonic()
        try:
            conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            status = response.status
        except Exception:  # noqa: BLE001 - a failed request is data
            status, conn = None, None
        out.append((start - t0, time.monotonic() - t0, status))


def _reasons(log: str) -> Counter:
    """Why PgBouncer closed connections ("closing because: ..."), counted."""
    found: Counter = Counter()
    for line in log.splitlines():
        if "closing because: " in line:
            found[line.split("closing because: ")[1].split(" (age")[0]] += 1
    return found


def run(cluster: servers.PgCluster, mode: str, settings: dict, seconds: float) -> dict:
    with PgBouncer(mode, cluster.port, settings=settings) as bouncer:
        env = servers.example_env(
            "postgresql", EXAMPLE_DB_NAME="keepalive_example", EXAMPLE_DB_PORT=bouncer.port,
            EXAMPLE_APPNAME="kamw_outage", EXAMPLE_DISABLE_SERVER_SIDE_CURSORS="1",
            KEEPALIVE_POOLER=json.dumps(mode))
        with servers.Server("sync", env, workers=2) as server:
            servers.run_load(server.port, "/", clients=CLIENTS, total=40)  # warm
            out: list = []
            stop = threading.Event()
            t0 = time.monotonic()
            clients = [threading.Thread(target=_client, args=(server.port, stop, out, t0))
                       for _ in range(CLIENTS)]
            for client in clients:
                client.start()
            stop.wait(RESTART_AT)
            cluster.restart()
            restarted = time.monotonic() - t0
            stop.wait(max(0.0, seconds - restarted))
            stop.set()
            for client in clients:
                client.join(70)
            log = bouncer.log()
    failed = [o for o in out if o[2] != 200]
    return {
        "mode": mode, "settings": settings, "restart_s": [RESTART_AT, round(restarted, 2)],
        "requests": len(out), "failed": len(failed),
        "failed_between_s": [round(min(f[0] for f in failed), 2),
                             round(max(f[1] for f in failed), 2)] if failed else None,
        "slowest_s": round(max(o[1] - o[0] for o in out), 2),
        "pgbouncer_closed_because": dict(_reasons(log).most_common(4)),
    }


def main(argv: list[str]) -> None:
    runs = [tuple(r) + ((8,) if len(r) == 2 else ()) for r in json.loads(argv[0])] \
        if argv else RUNS
    with servers.PgCluster() as cluster:
        servers.prepare_database("postgresql", "keepalive_example", port=cluster.port)
        for mode, settings, seconds in runs:
            print(json.dumps(run(cluster, mode, settings, seconds)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
