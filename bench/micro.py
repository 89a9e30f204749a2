"""In-process microbenchmark: what keepalive_mw itself costs per request, against Django's
``close_old_connections`` (run twice per request, at request_started and request_finished).

Each case runs in its own Python process (Django settings are per process), with warm
connections: keepalive_mw's pool holds a live connection for every alias used, and Django's
persistent connections (CONN_MAX_AGE=600) are open. One "request" is:

* keepalive_mw: ``on_request_started`` → touch ``connections[alias]`` for each alias used
  (a checkout from the pool, with the free health check) → ``set_outcome(SUCCEEDED)`` →
  ``on_request_finished`` (the give-back with end-of-request hygiene);
* Django: ``close_old_connections()`` → touch ``connections[alias]`` → ``close_old_connections()``.

No query runs inside the loop: the figure is bookkeeping only. A ``SELECT 1`` round trip is
measured once for scale.

Release modes (``KEEPALIVE_RELEASE``): in mode "transaction" the library's work follows the
queries (a session borrowed and given back per transaction, each cursor counted), so a
second set of cases runs 0, 1 and 3 queries (``SELECT 1`` through a Django cursor, each in
autocommit: one transaction each) per request on one alias, with one alias configured:

* ``bare``: the queries alone on a persistent connection, no request bookkeeping at all;
* ``django``: ``close_old_connections()`` around them (CONN_MAX_AGE=600);
* ``keepalive`` (RELEASE "request") and ``keepalive_tx`` (RELEASE "transaction"): the
  request signals around them, as above.

The library's cost per request is the mode's time less the same queries alone, timed in
the same process, interleaved (in keepalive_mw's processes outside any unit of work, where
the thread keeps its session: what remains there of the library, in transaction mode the
cursor counting, is not counted). The queries' own cost cancels out.

``python -m bench.micro`` prints the figures for SQLite files (no server needed).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ("keepalive", "django")
# Modes of the query cases: the queries alone, Django, and keepalive_mw's two release modes.
QUERY_MODES = ("bare", "django", "keepalive", "keepalive_tx")


def _databases(backend: dict, configured: int, tmpdir: str) -> dict:
    aliases = ["default"] + [f"alias{i}" for i in range(1, configured)]
    out = {}
    for alias in aliases:
        if backend["kind"] == "sqlite":
            out[alias] = {"ENGINE": "django.db.backends.sqlite3",
                          "NAME": os.path.join(tmpdir, f"micro_{alias}.sqlite3")}
        else:
            out[alias] = {"ENGINE": "django.db.backends.postgresql", "NAME": backend["name"],
                          "HOST": backend["host"], "PORT": str(backend["port"]),
                          "USER": backend["user"], "PASSWORD": backend["password"],
                          "OPTIONS": {"application_name": "kamw-bench-micro"}}
    return out


def _child(spec: dict) -> dict:
    """Runs in a fresh process: configure Django for one mode and time every case."""
    import django
    from django.conf import settings

    mode = spec["mode"]
    tmpdir = spec["tmpdir"]
    databases = _databases(spec["backend"], spec["configured"], tmpdir)
    for cfg in databases.values():
        cfg["CONN_MAX_AGE"] = 600 if mode == "django" else 0
    kept = mode.startswith("keepalive")
    settings.configure(
        DATABASES=databases,
        INSTALLED_APPS=["keepalive_mw"] if kept else [],
        MIDDLEWARE=["keepalive_mw.middleware.KeepAliveMiddleware"] if kept else [],
        KEEPALIVE_RELEASE="transaction" if mode == "keepalive_tx" else "request",
        USE_TZ=True, TIME_ZONE="UTC", SECRET_KEY="micro", DEBUG=False,
    )
    django.setup()
    from django.db import close_old_connections, connections

    aliases = list(databases)
    iterations = spec["iterations"]

    if kept:
        from keepalive_mw import units

        started, finished = units.on_request_started, units.on_request_finished
        set_outcome, succeeded = units.set_outcome, units.SUCCEEDED

        def warm(used):
            started(None)
            for alias in used:
                connections[alias].ensure_connection()
            set_outcome(succeeded)
            finished(None)

        def loop(used, n):
            t0 = time.perf_counter()
            for _ in range(n):
                started(None)
                for alias in used:
                    connections[alias]
                set_outcome(succeeded)
                finished(None)
            return time.perf_counter() - t0

        def request_started():
            started(None)

        def request_finished():
            set_outcome(succeeded)
            finished(None)
    else:
        def warm(used):
            # Only the aliases used are initialized on this thread, as in a process whose
            # requests touch only those: close_old_connections visits initialized ones.
            for alias in aliases:
                if alias not in used and getattr(connections._connections, alias, None) is not None:
                    connections[alias].close()
                    del connections[alias]
            for alias in used:
                connections[alias].ensure_connection()

        def loop(used, n):
            t0 = time.perf_counter()
            for _ in range(n):
                close_old_connections()
                for alias in used:
                    connections[alias]
                close_old_connections()
            return time.perf_counter() - t0

        request_started = request_finished = close_old_connections

    def query_loop(queries, n, around=True):
        """``n`` requests of ``queries`` queries on one alias; ``around=False``: the
        queries alone, without the request's start and end."""
        t0 = time.perf_counter()
        for _ in range(n):
            if around:
                request_started()
            connections["default"]
            for _ in range(queries):
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT 1")
                    cursor.fetchone()
            if around:
                request_finished()
        return time.perf_counter() - t0

    cases = [n for n in spec["used"] if n <= len(aliases)]
    timings: dict[int, list[float]] = {n: [] for n in cases}
    for _ in range(spec["repeats"]):  # cases interleaved, so drift hits all alike
        for n in cases:
            used = aliases[:n]
            warm(used)
            loop(used, max(1, iterations // 20))  # settle caches
            gc.collect()
            timings[n].append(loop(used, iterations) / iterations * 1e6)

    # Requests running queries (one alias configured only): the modes' cost with queries.
    query_timings: dict[str, dict[int, list[float]]] = {}
    if spec.get("queries") and len(aliases) == 1:
        # "bare" in every child: the cost of the queries in that very process, interleaved
        # with the mode's own loop, so that machine drift cancels out.
        query_modes = [mode, "bare"]
        query_timings = {m: {q: [] for q in spec["queries"]} for m in query_modes}
        warm(aliases[:1])
        for _ in range(spec["repeats"]):
            for q in spec["queries"]:
                for m in query_modes:
                    around = m != "bare"
                    query_loop(q, max(1, iterations // 20), around)
                    gc.collect()
                    query_timings[m][q].append(query_loop(q, iterations, around)
                                               / iterations * 1e6)

    # One SELECT 1 round trip, for scale.
    round_trip = []
    if kept:
        started(None)
    with connections["default"].cursor() as cursor:
        for _ in range(200):
            t0 = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            round_trip.append((time.perf_counter() - t0) * 1e6)
    if kept:
        set_outcome(succeeded)
        finished(None)
    result = {
        "mode": mode, "configured": len(aliases), "iterations": iterations,
        "repeats": spec["repeats"],
        "cases": {str(n): {"us_median": statistics.median(v), "us_min": min(v), "runs": v}
                  for n, v in timings.items()},
        "select1_us_median": statistics.median(round_trip),
        "query_cases": {m: {str(q): {"us_min": min(v), "us_median": statistics.median(v),
                                     "runs": v} for q, v in by_q.items()}
                        for m, by_q in query_timings.items()},
    }
    if kept:
        from keepalive_mw import get_stats

        stats = get_stats()
        result["opened"] = sum(s["connections_opened"] for s in stats.values())
        result["reused"] = sum(s["connections_reused"] for s in stats.values())
    return result


def run_micro(backend: dict | None = None, *, configured: int = 8, used=(0, 1, 2, 4, 8),
              iterations: int = 20000, repeats: int = 5, timeout: float = 300,
              queries=(0, 1, 3)) -> dict:
    """Time every case in child processes; return the figures (µs per request).

    ``backend``: ``{"kind": "sqlite"}`` (default: files in a temp dir) or ``{"kind":
    "postgresql", "name", "host", "port", "user", "password"}``. Each mode runs once with a
    single configured alias and once with ``configured`` aliases, so that the cost of
    configured-but-unused aliases shows. With one alias configured, each mode also runs
    requests of ``queries`` queries, and a child runs them in release mode "transaction".
    """
    backend = backend or {"kind": "sqlite"}
    results = []
    with tempfile.TemporaryDirectory(prefix="kamw_micro_") as tmpdir:
        for total in sorted({1, configured}):
            modes = MODES + (("keepalive_tx",) if total == 1 and queries else ())
            for mode in modes:
                spec = {"mode": mode, "configured": total, "backend": backend, "tmpdir": tmpdir,
                        "used": [] if mode == "keepalive_tx" else [n for n in used if n <= total],
                        "iterations": iterations, "repeats": repeats,
                        "queries": list(queries) if total == 1 else []}
                env = {k: v for k, v in os.environ.items()
                       if not k.startswith(("KEEPALIVE_", "EXAMPLE_")) and k != "DJANGO_SETTINGS_MODULE"}
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
                proc = subprocess.run([sys.executable, "-m", "bench.micro", "--child", json.dumps(spec)],
                                      cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                      timeout=timeout)
                if proc.returncode != 0:
                    raise RuntimeError(f"microbenchmark child ({mode}, {total} aliases) failed:\n"
                                       f"{proc.stderr[-3000:]}")
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return summarize(results, backend["kind"])


def summarize(results: list, backend_kind: str) -> dict:
    """Rows: mode × configured × used → median µs per request; plus derived figures."""
    rows = []
    query_rows = []
    for r in results:
        cases = r.get("query_cases", {})
        bare = cases.get("bare", {})
        for qmode, by_q in cases.items():
            if qmode == "bare" and r["mode"] != "django":
                continue  # shown once: from the process without keepalive_mw
            for q, case in by_q.items():
                row = {"mode": qmode, "queries": int(q),
                       "us_per_request": round(case["us_min"], 3),
                       "us_median": round(case["us_median"], 3),
                       "runs_us": [round(x, 3) for x in case["runs"]]}
                if qmode != "bare" and q in bare:
                    # Less the same queries alone, timed in the same process.
                    row["library_us"] = round(case["us_min"] - bare[q]["us_min"], 3)
                    row["bare_us"] = round(bare[q]["us_min"], 3)
                query_rows.append(row)
        for used, case in r["cases"].items():
            # Best of the repeats (as timeit advises): the least disturbed by other processes.
            rows.append({"mode": r["mode"], "configured": r["configured"], "used": int(used),
                         "us_per_request": round(case["us_min"], 3),
                         "us_median": round(case["us_median"], 3),
                         "runs_us": [round(x, 3) for x in case["runs"]]})
    rows.sort(key=lambda row: (MODES.index(row["mode"]), row["configured"], row["used"]))
    query_rows.sort(key=lambda row: (QUERY_MODES.index(row["mode"]), row["queries"]))

    def get(mode, configured, used):
        for row in rows:
            if (row["mode"], row["configured"], row["used"]) == (mode, configured, used):
                return row["us_per_request"]
        return None

    big = max(r["configured"] for r in results)
    ka = {u: get("keepalive", big, u) for u in sorted({row["used"] for row in rows})}
    per_alias = None
    used_max = max(u for u, v in ka.items() if v is not None)
    if used_max >= 2 and ka.get(1) is not None and ka.get(used_max) is not None:
        per_alias = (ka[used_max] - ka[1]) / (used_max - 1)
    derived = {
        "keepalive_1_alias_us": get("keepalive", big, 1),
        "keepalive_1_alias_1_configured_us": get("keepalive", 1, 1),
        "keepalive_0_used_us": get("keepalive", big, 0),
        "keepalive_0_used_1_configured_us": get("keepalive", 1, 0),
        "keepalive_per_extra_alias_us": per_alias,
        "keepalive_max_used": used_max,
        "keepalive_max_used_us": ka.get(used_max),
        "django_1_alias_us": get("django", big, 1),
        "django_max_used_us": get("django", big, used_max),
        "configured_aliases": big,
        "select1_round_trip_us": round(statistics.median(r["select1_us_median"] for r in results), 1),
        # Linear or better: cost(n) <= n * cost(1) (with 10 % slack for noise).
        "linear_or_better": (ka.get(used_max) is not None and ka.get(1) is not None
                             and ka[used_max] <= used_max * ka[1] * 1.1),
        # Unused configured aliases cost nothing: a request with N configured costs what it
        # costs with 1 configured (no alias used; one alias used).
        "unused_aliases_extra_us": (None if get("keepalive", 1, 0) is None else
                                    round(get("keepalive", big, 0) - get("keepalive", 1, 0), 3)),
        "unused_aliases_extra_1_used_us": (None if get("keepalive", 1, 1) is None else
                                           round(get("keepalive", big, 1) - get("keepalive", 1, 1), 3)),
        "django_unused_aliases_extra_us": (None if get("django", 1, 0) is None else
                                           round(get("django", big, 0) - get("django", 1, 0), 3)),
    }
    return {"backend": backend_kind, "rows": rows, "derived": derived, "query_rows": query_rows}


def markdown(micro: dict) -> str:
    big = micro["derived"]["configured_aliases"]
    used_values = sorted({row["used"] for row in micro["rows"] if row["configured"] == big})
    lines = ["| library cost, µs/request (best of repeats) | " + " | ".join(
        f"{u} alias{'es' if u != 1 else ''} used" for u in used_values) + " |",
        "|---|" + "---:|" * len(used_values)]
    for mode, label in (("keepalive", "keepalive_mw (checkout + check + give-back)"),
                        ("django", "Django close_old_connections ×2")):
        for configured in sorted({row["configured"] for row in micro["rows"]}):
            cells = []
            for u in used_values:
                row = next((r for r in micro["rows"] if (r["mode"], r["configured"], r["used"]) ==
                            (mode, configured, u)), None)
                cells.append(f"{row['us_per_request']:.2f}" if row else "–")
            lines.append(f"| {label}, {configured} configured | " + " | ".join(cells) + " |")
    d = micro["derived"]
    lines.append("")
    lines.append(f"keepalive_mw: each extra alias used +{d['keepalive_per_extra_alias_us']:.2f} µs; "
                 f"{big - 1} configured but unused aliases {d['unused_aliases_extra_us']:+.2f} µs "
                 f"(Django: {d['django_unused_aliases_extra_us']:+.2f} µs, close_old_connections "
                 f"visits every configured alias); one SELECT 1 round trip for scale: "
                 f"{d['select1_round_trip_us']:.0f} µs ({micro['backend']}).")
    query_rows = micro.get("query_rows") or []
    if query_rows:
        counts = sorted({row["queries"] for row in query_rows})
        labels = {"bare": "the queries alone (persistent connection, no bookkeeping)",
                  "django": "Django close_old_connections ×2",
                  "keepalive": "keepalive_mw, RELEASE \"request\"",
                  "keepalive_tx": "keepalive_mw, RELEASE \"transaction\""}
        lines += ["", "| per request, one alias, µs (library cost: less the queries alone) | "
                  + " | ".join(f"{q} quer{'y' if q == 1 else 'ies'}" for q in counts) + " |",
                  "|---|" + "---:|" * len(counts)]
        for mode in QUERY_MODES:
            cells = []
            for q in counts:
                row = next((r for r in query_rows if (r["mode"], r["queries"]) == (mode, q)),
                           None)
                if row is None:
                    cells.append("–")
                elif "library_us" not in row:
                    cells.append(f"{row['us_per_request']:.2f}")
                else:
                    cells.append(f"{row['us_per_request']:.2f} ({row['library_us']:+.2f})")
            lines.append(f"| {labels[mode]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
    else:
        result = run_micro(iterations=int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
        print(markdown(result))
