"""Benchmark: keepalive_mw against Django's own ways of handling database connections.

    python bench/run.py                  # everything, 3 interleaved rounds (~25 min)
    python bench/run.py --quick          # reduced matrix, 1 round, no fleet or chaos (< 3 min)
    python bench/run.py --quick --fleet  # ... plus the fleet run (--chaos: the chaos run)
    python bench/run.py --only chaos     # one part alone (matrix, slow, celery, micro, fleet, chaos)

Every variant serves the example project's ``/`` view (three small queries) from its own
server processes, against its own database of a throwaway PostgreSQL cluster whose role
authenticates with scram-sha-256. Variants run interleaved (A B C … A B C …) so that drift
hits all alike. Load comes from ``wrk`` (or a Python client), bounded, on loopback only.
Through-PgBouncer variants (plain Django, and keepalive_mw) get a PgBouncer in transaction
mode per cell; their server sessions are PgBouncer's.

Figures per variant × server: requests/s, p50/p99 latency, errors (non-2xx/3xx responses
and socket errors), server connections at peak (pg_stat_activity sampled every 50 ms) and
after the run, new server sessions per request (pg_stat_database.sessions) and extra
statements per request (pg_stat_database xact_commit + xact_rollback, minus the view's own
statements per request; requests counted by the server through pg_stat_statements),
and each variant's throughput relative to keepalive_mw. The same on the slow view
(``/slow/``, async: a query, 100 ms await, a query) under uvicorn with 64 clients, with
server sessions per 100 requests/s. Plus an in-process microbenchmark of the library's own
per-request cost (bench/micro.py), a Celery row (bench/workers.py): tasks/s, new sessions
per task and peak sessions of a prefork worker running the same three queries as tasks,
interleaved with the servers' cells; a fleet run (bench/fleet.py: four servers at once
through one PgBouncer, then direct) and a chaos run (bench/chaos.py: restarts and
terminated sessions under load).

Output: a Markdown report on stdout, bench/results/<timestamp>.json (every figure) and
.png (chart); a full run also refreshes bench/results/latest.json and latest.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import chaos, fleet, workers  # noqa: E402
from bench.matrix import (LEAKY, PATH, PGBOUNCER_VARIANTS, REFERENCE, SEED_ROWS,  # noqa: E402
                          SERVERS, SLOW_VARIANTS, VARIANTS, VIEWS, _db, cells, clients)
from bench.report import aggregate, chart, machine_info, markdown, targets  # noqa: E402, F401
from bench.report import _fmt  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results"
PARTS = ("matrix", "slow", "celery", "micro", "fleet", "chaos")
QUICK_PARTS = ("matrix", "slow", "celery", "micro")
REQUIRED = ("django", "psycopg", "psycopg_pool", "gunicorn", "uvicorn")
OPTIONAL = {"gevent": "the gunicorn gevent server is skipped",
            "matplotlib": "no chart is drawn"}


def _missing(modules) -> list:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


# -- one run of one variant on one server ------------------------------------------------------


def _server_class():
    """The integration harness's Server, with uvicorn started through bench.uvicorn_nodelay
    (uvicorn --workers N leaves Nagle's algorithm on: ~40 ms per keep-alive request)."""
    from tests.integration.servers import Server

    class BenchServer(Server):
        def command(self, port):
            cmd = super().command(port)
            if self.kind == "uvicorn" and cmd[1:3] == ["-m", "uvicorn"]:
                cmd[1:3] = ["-m", "bench.uvicorn_nodelay"]
            return cmd

    return BenchServer



class Bench:
    def __init__(self, args):
        self.args = args
        self.cluster = None
        self.baseline: dict = {}  # dbname -> settled counters before the next run
        self.runs: list = []
        self.failures: list = []

    # setup
    def start(self):
        from bench import pg

        self.cluster = pg.BenchCluster(max_connections=self.args.max_connections).start()
        for variant in self.variants:
            self._prepare(variant)

    def stop(self):
        if self.cluster is not None:
            self.cluster.stop()

    @property
    def variants(self) -> list:
        """Variants of the matrix's cells (fast and slow views): one database each."""
        parts = self.args.parts
        chosen = (self.args.variants if "matrix" in parts else []) + \
            (self.args.slow_variants if "slow" in parts else [])
        return list(dict.fromkeys(chosen))

    def env(self, variant: str, port: int) -> dict:
        return self.example_env(_db(variant), f"kamw-bench-{variant}", VARIANTS[variant][1], port)

    def example_env(self, db: str, appname: str, overrides: dict, port: int) -> dict:
        """The example project's environment for database ``db`` of the cluster, through
        ``port`` (the cluster's or a PgBouncer's)."""
        from bench import pg
        from tests.integration.servers import example_env

        return example_env("postgresql", **{
            **overrides, "EXAMPLE_DB_NAME": db, "EXAMPLE_DB_HOST": "127.0.0.1",
            "EXAMPLE_DB_PORT": port, "EXAMPLE_DB_USER": pg.ROLE,
            "EXAMPLE_DB_PASSWORD": self.cluster.password, "EXAMPLE_APPNAME": appname})

    def _prepare(self, variant: str):
        self.prepare_database(_db(variant), self.env(variant, self.cluster.port))

    def prepare_database(self, db: str, env: dict):
        """Create and migrate ``db``, seed it, and record its settled counters."""
        from bench import pg
        from tests.integration.servers import manage

        self.cluster.create_database(db)
        env = dict(env, EXAMPLE_VARIANT="default")  # migrate with plain Django whatever the variant
        manage(env, "migrate", "--verbosity", "0")
        with self.cluster.connect(db) as conn:
            conn.execute("INSERT INTO shop_row (label, created) "
                         "SELECT 'seed ' || i, now() FROM generate_series(1, %s) i", [SEED_ROWS])
            conn.execute("ANALYZE shop_row")
        self.baseline[db] = pg.settled_counters(self.cluster, db)

    # servers
    @contextlib.contextmanager
    def database_port(self, db: str, pgbouncer: bool, **bouncer_options):
        """(port, PgBouncer or None): where the example reaches ``db``, the cluster itself or a
        PgBouncer in transaction mode started for it (and stopped after)."""
        from bench import pg

        if not pgbouncer:
            yield self.cluster.port, None
            return
        bouncer = pg.PgBouncer(self.cluster, db, **bouncer_options).start()
        try:
            yield bouncer.port, bouncer
        finally:
            bouncer.stop()

    @contextlib.contextmanager
    def serve(self, server: str, env: dict, warm_path: str = PATH):
        """A started server of the example project, as ``SERVERS[server]`` says, a few
        requests per worker already served (imports and URL resolution done before timing).
        Once stopped, its stderr is in ``.log``."""
        from tests.integration.servers import http_get

        _label, kind, workers, threads, _clients = SERVERS[server]
        srv = _server_class()(kind, env, workers=workers, threads=threads, start_timeout=60)
        srv.start()
        try:
            for _ in range(2 * workers):
                with contextlib.suppress(OSError):
                    http_get(srv.port, warm_path, timeout=10)
            yield srv
        finally:
            srv.stop()
            srv.log = srv.stderr_path.read_text(errors="replace")
            shutil.rmtree(srv._logdir, ignore_errors=True)

    # one cell
    def run_cell(self, variant: str, server: str, round_no: int, duration: float,
                 view: str = "fast") -> dict:
        from bench import load, pg

        _label, _kind, workers, threads, _clients = SERVERS[server]
        db = _db(variant)
        path = VIEWS[view].path
        n_clients = clients(server, view)
        if (variant, server) in LEAKY:
            duration = min(duration, self.args.leak_duration)
        result = {"variant": variant, "server": server, "view": view, "round": round_no,
                  "workers": workers, "threads": threads, "clients": n_clients, "path": path}
        sampler = pg.ActivitySampler(self.cluster, db).start()
        t_start = time.monotonic()
        try:
            with self.database_port(db, VARIANTS[variant][2]) as (port, _bouncer), \
                    self.serve(server, self.env(variant, port), warm_path=path) as srv:
                stats = load.run(srv.port, path, clients=n_clients, duration=duration)
                time.sleep(self.args.after_delay)
                sampler.stop()
                with self.cluster.connect() as conn:
                    after = pg.client_sessions(conn, db)
        finally:
            sampler.close()
        result.update(stats)
        result["conns_peak"] = sampler.peak
        result["conns_after"] = after
        result["samples"] = sampler.samples
        result["too_many_clients"] = (srv.log.count("too many clients")
                                      + srv.log.count("remaining connection slots are reserved"))
        result["server_tracebacks"] = srv.log.count("Traceback (most recent call last)")
        settled = pg.settled_counters(self.cluster, db)
        before = self.baseline[db]
        self.baseline[db] = settled
        xacts = settled["xacts"] - before["xacts"]
        sessions = settled["sessions"] - before["sessions"]
        extras = {}
        for query, calls in settled["statements"].items():
            delta = calls - before["statements"].get(query, 0)
            extras[query] = delta
        served = sum(n for query, n in extras.items() if query.startswith(VIEWS[view].marker))
        own = VIEWS[view].statements
        result.update(
            served=served,
            xacts=xacts,
            sessions=sessions,
            sessions_per_request=sessions / served if served else None,
            extra_statements_per_request=(xacts - own * served) / served if served else None,
            statements={q: n for q, n in sorted(extras.items(), key=lambda kv: -kv[1]) if n},
            wall_s=round(time.monotonic() - t_start, 2),
        )
        return result


# -- main --------------------------------------------------------------------------------------


def _subset(p, value, known, what, default) -> list:
    chosen = [v.strip() for v in value.split(",") if v.strip()] if value is not None else list(default)
    for item in chosen:
        if item not in known:
            p.error(f"unknown {what} {item!r}; choose from {', '.join(known)}")
    return chosen


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="reduced matrix, 1 round, no fleet or chaos run (< 3 min)")
    p.add_argument("--fleet", action="store_true", help="add the fleet run (part of a full run)")
    p.add_argument("--chaos", action="store_true", help="add the chaos run (part of a full run)")
    p.add_argument("--only", help="run only these parts, comma-separated: " + ",".join(PARTS))
    p.add_argument("--rounds", type=int, help="interleaved rounds (full: 3, quick: 1)")
    p.add_argument("--duration", type=float,
                   help="seconds of load per cell and of the fleet run (full: 6, quick: 3)")
    p.add_argument("--leak-duration", type=float, default=3.0,
                   help="seconds of load for cells expected to leak connections (default 3)")
    p.add_argument("--servers", help="comma-separated subset of " + ",".join(SERVERS))
    p.add_argument("--variants", help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--slow-variants", help="variants on the slow view, comma-separated subset of "
                   + ",".join(VARIANTS) + " (default " + ",".join(SLOW_VARIANTS) + ")")
    p.add_argument("--max-connections", type=int, default=100,
                   help="max_connections of the throwaway cluster (default 100)")
    p.add_argument("--no-micro", action="store_true", help="skip the in-process microbenchmark")
    p.add_argument("--micro-iterations", type=int, help="microbenchmark iterations per case")
    p.add_argument("--after-delay", type=float, default=1.0,
                   help="seconds after the load before counting remaining connections")
    p.add_argument("--celery-tasks", type=int,
                   help="tasks per Celery cell (full: 1000, quick: 300; 0: no Celery row)")
    p.add_argument("--celery-variants", help="comma-separated subset of " + ",".join(workers.CELERY_VARIANTS))
    chaos.add_arguments(p)
    p.add_argument("--output", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 6.0)
    if args.only is not None:
        args.parts = _subset(p, args.only, PARTS, "part", ())
    else:
        args.parts = list(QUICK_PARTS if args.quick else PARTS)
        args.parts += [part for part in ("fleet", "chaos") if getattr(args, part) and part not in args.parts]
    if args.no_micro and "micro" in args.parts:
        args.parts.remove("micro")
    if args.celery_tasks == 0 and "celery" in args.parts:
        args.parts.remove("celery")
    args.servers = _subset(p, args.servers, SERVERS, "server",
                           ["sync", "uvicorn"] if args.quick else SERVERS)
    args.variants = _subset(p, args.variants, VARIANTS, "variant",
                            ["default", "conn_max_age", "pool", "pgbouncer", "keepalive_pgbouncer",
                             "keepalive"] if args.quick else VARIANTS)
    args.slow_variants = _subset(p, args.slow_variants, VARIANTS, "variant", SLOW_VARIANTS)
    if args.celery_tasks is None:
        args.celery_tasks = 300 if args.quick else 1000
    args.celery_variants = _subset(p, args.celery_variants, workers.CELERY_VARIANTS, "celery_variant",
                                   [v for v in workers.CELERY_VARIANTS if v != "conn_max_age_reuse"]
                                   if args.quick else workers.CELERY_VARIANTS)
    chaos.check_arguments(p, args)
    if args.micro_iterations is None:
        args.micro_iterations = 3000 if args.quick else 10000
    return args


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = _missing(REQUIRED)
    if missing:
        print(f"bench: missing Python packages: {', '.join(missing)}.\n"
              f"Install them with:  python -m pip install -e '.[test]' -r bench/requirements.txt",
              file=sys.stderr)
        return 2
    for module, consequence in OPTIONAL.items():
        if _missing([module]):
            print(f"bench: {module} is not installed: {consequence} "
                  f"(python -m pip install -r bench/requirements.txt)", file=sys.stderr)
    if _missing(["gevent"]) and "gevent" in args.servers:
        args.servers.remove("gevent")
    from bench import pg

    if not pg.PGBOUNCER:
        print("bench: pgbouncer is not installed: the through-PgBouncer variants are skipped",
              file=sys.stderr)
        for chosen in (args.variants, args.slow_variants, args.chaos_variants):
            chosen[:] = [v for v in chosen if v not in PGBOUNCER_VARIANTS]
    if "matrix" in args.parts and REFERENCE not in args.variants:
        args.variants.append(REFERENCE)

    loadavg_before = os.getloadavg()[0]
    if loadavg_before > 0.5 * (os.cpu_count() or 1):
        print(f"bench: the machine is busy (1-minute load average {loadavg_before:.2f} on "
              f"{os.cpu_count()} cores): figures will be noisier", file=sys.stderr)
    started = time.monotonic()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    round_cells = cells(args.variants if "matrix" in args.parts else [], args.servers,
                        args.slow_variants if "slow" in args.parts else [])
    total = len(round_cells) * args.rounds
    log = lambda msg: print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    bench = Bench(args)
    celery = None
    if "celery" in args.parts:
        reason = workers.missing()
        if reason:
            print(f"bench: no Celery row: {reason}", file=sys.stderr)
        else:
            celery = workers.CeleryBench(bench, args.celery_variants, args.celery_tasks)
    micro = fleet_results = chaos_results = None
    try:
        log(f"starting a throwaway PostgreSQL cluster ({pg.AUTH_METHOD}) and "
            f"{len(bench.variants)} databases")
        bench.start()
        if celery is not None:
            log(f"starting Redis and {len(celery.variants)} databases for the Celery cells")
            celery.start()
        machine = machine_info(bench.cluster)
        machine["loadavg_before"] = round(loadavg_before, 2)
        n = 0
        for round_no in range(1, args.rounds + 1):
            if not round_cells and celery is None:
                break
            for variant, server, view in round_cells:
                n += 1
                what = f"{n}/{total} round {round_no} {SERVERS[server][0]:16} {view:4} {variant:20}"
                try:
                    run = bench.run_cell(variant, server, round_no, args.duration, view)
                except Exception as exc:  # noqa: BLE001 - reported, the other cells go on
                    bench.failures.append({"variant": variant, "server": server, "view": view,
                                           "round": round_no,
                                           "error": f"{type(exc).__name__}: {exc}"[:3000]})
                    log(f"{what} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                    with contextlib.suppress(Exception):  # the next run's counters start here
                        bench.baseline[_db(variant)] = pg.settled_counters(bench.cluster, _db(variant))
                    continue
                bench.runs.append(run)
                log(f"{what} {run['rps']:7.0f} req/s  p99 {run['p99_ms']:6.1f} ms  "
                    f"errors {run['non_2xx_3xx'] + run['socket_errors']:4}  "
                    f"conns {run['conns_peak']:3}/{run['conns_after']:3}  "
                    f"sess/req {_fmt(run['sessions_per_request'], '.3f')}  "
                    f"extra/req {_fmt(run['extra_statements_per_request'], '+.3f')}  ({run['wall_s']} s)")
            if celery is not None:
                workers.run_round(celery, round_no, log)
        if "fleet" in args.parts:
            log(f"fleet run: {fleet.describe()}, through one PgBouncer, then direct")
            modes = [m for m in fleet.MODES if pg.PGBOUNCER or m != "pgbouncer"]
            fleet_results = fleet.run(bench, args.duration, log, modes)
        if "chaos" in args.parts:  # last of the servers' parts: it restarts the cluster
            log(f"chaos run: PgBouncer settings {args.chaos_pgbouncer or 'defaults'}")
            chaos_results = chaos.run(bench, args, log)
        if "micro" in args.parts:
            from bench.micro import run_micro

            log("microbenchmark of the library's own per-request cost")
            with contextlib.suppress(Exception):
                bench.cluster.create_database("bench_micro")
            micro = run_micro({"kind": "postgresql", "name": "bench_micro", "host": "127.0.0.1",
                               "port": bench.cluster.port, "user": pg.ROLE,
                               "password": bench.cluster.password},
                              iterations=args.micro_iterations, repeats=3 if args.quick else 5)
    finally:
        if celery is not None:
            celery.stop()
        bench.stop()

    summary = aggregate(bench.runs)
    full = not args.quick and args.rounds >= 3 and set(args.servers) == set(SERVERS) and \
        set(args.variants) >= set(VARIANTS) - set(PGBOUNCER_VARIANTS) and \
        {"matrix", "slow", "fleet", "chaos"} <= set(args.parts)
    for row in summary:
        row["max_connections"] = args.max_connections
    data = {
        "timestamp": stamp,
        "config": {"kind": "full" if full else ("quick" if args.quick else "custom"),
                   "quick": args.quick, "parts": args.parts, "rounds": args.rounds,
                   "duration": args.duration,
                   "leak_duration": args.leak_duration, "servers": args.servers,
                   "variants": args.variants, "slow_variants": args.slow_variants,
                   "max_connections": args.max_connections,
                   "path": PATH, "view_statements": pg.VIEW_STATEMENTS, "seed_rows": SEED_ROWS,
                   "views": {name: view._asdict() for name, view in VIEWS.items()},
                   "servers_detail": {s: dict(zip(("label", "kind", "workers", "threads", "clients"),
                                                  SERVERS[s])) for s in args.servers},
                   "variants_detail": {v: {"label": VARIANTS[v][0], "env": VARIANTS[v][1],
                                           "pgbouncer": VARIANTS[v][2]}
                                       for v in dict.fromkeys(args.variants + args.slow_variants)}},
        "machine": machine,
        "summary": summary,
        "runs": bench.runs,
        "failures": bench.failures,
        "micro": micro,
        "celery": workers.results(celery, args.rounds) if celery is not None else None,
        "fleet": fleet_results,
        "chaos": chaos_results,
    }
    found = targets(summary, micro, fleet_results) + \
        (workers.targets(data["celery"]["summary"]) if celery else [])
    data["targets"] = [{"target": t, "value": v, "met": m} for t, v, m in found]
    args.output.mkdir(parents=True, exist_ok=True)
    json_path = args.output / f"{stamp}.json"
    png_path = args.output / f"{stamp}.png"
    files = [_relative(json_path)]
    drawn = chart(data, png_path)
    if drawn:
        files.append(_relative(png_path))
    data["elapsed_s"] = round(time.monotonic() - started, 1)
    data["files"] = files
    json_path.write_text(json.dumps(data, indent=1, default=str))
    if full and args.output == RESULTS:
        shutil.copyfile(json_path, RESULTS / "latest.json")
        if drawn:
            shutil.copyfile(png_path, RESULTS / "latest.png")
        data["files"] += ["bench/results/latest.json"] + (["bench/results/latest.png"] if drawn else [])
    report = {**data, "targets": [(t["target"], t["value"], t["met"]) for t in data["targets"]]}
    print(markdown(report))
    log(f"done in {data['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
