"""The benchmark's report code, its microbenchmark and the demo: fast, no database fixtures.

The microbenchmark and the demo run in child processes on SQLite files or a throwaway
embedded PostgreSQL server in temp dirs, so these tests neither touch the test databases nor
depend on pytest-django (``-p no:django`` works).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

from bench import micro
from bench import run as bench_run

REPO_ROOT = Path(__file__).resolve().parents[1]


def _child_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EXAMPLE_", "KEEPALIVE_")) and k not in ("DJANGO_SETTINGS_MODULE",
                                                                          "DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def test_microbenchmark_returns_sane_numbers():
    result = micro.run_micro({"kind": "sqlite"}, configured=3, used=(0, 1, 3), iterations=300,
                             repeats=2, timeout=60)
    cases = {(row["mode"], row["configured"], row["used"]) for row in result["rows"]}
    assert cases == {
        ("keepalive", 1, 0), ("keepalive", 1, 1), ("keepalive", 3, 0), ("keepalive", 3, 1),
        ("keepalive", 3, 3), ("django", 1, 0), ("django", 1, 1), ("django", 3, 0),
        ("django", 3, 1), ("django", 3, 3),
    }
    for row in result["rows"]:
        assert len(row["runs_us"]) == 2
        # Sane, not fast: positive, finite, below a millisecond per simulated request.
        assert 0 < row["us_per_request"] < 1000, row
    derived = result["derived"]
    assert derived["configured_aliases"] == 3
    assert derived["keepalive_max_used"] == 3
    assert math.isfinite(derived["keepalive_per_extra_alias_us"])
    assert derived["select1_round_trip_us"] > 0
    text = micro.markdown(result)
    assert "keepalive_mw (checkout + check + give-back), 3 configured" in text
    assert "Django close_old_connections ×2, 1 configured" in text


def _run(variant, server, rnd, rps, **extra):
    run = {"variant": variant, "server": server, "round": rnd, "workers": 2, "clients": 8,
           "rps": rps, "p50_ms": 2.0, "p99_ms": 9.0, "requests": int(rps * 5), "duration_s": 5.0,
           "non_2xx_3xx": 0, "socket_errors": 0, "too_many_clients": 0, "conns_peak": 4,
           "conns_after": 4, "served": int(rps * 5), "sessions": 4, "xacts": int(rps * 5) * 3 + 8}
    run.update(extra)
    return run


def test_report_aggregates_rounds_and_reports_targets():
    runs = []
    for rnd, factor in ((1, 1.0), (2, 1.1), (3, 0.9)):
        runs += [
            _run("default", "sync", rnd, 200 * factor, sessions=int(200 * factor * 5),
                 xacts=int(200 * factor * 5) * 5),
            _run("conn_max_age", "sync", rnd, 1720 * factor),
            _run("keepalive", "sync", rnd, 1650 * factor),
            _run("pool", "uvicorn", rnd, 650 * factor),
            _run("keepalive", "uvicorn", rnd, 660 * factor),
            _run("conn_max_age", "uvicorn", rnd, 190 * factor, non_2xx_3xx=3, too_many_clients=3,
                 conns_peak=96, conns_after=90),
        ]
    rows = bench_run.aggregate(runs)
    row = next(r for r in rows if (r["variant"], r["server"]) == ("keepalive", "sync"))
    assert row["rounds"] == 3 and row["rps"] == 1650
    assert row["extra_statements_per_request"] < 0.01
    default = next(r for r in rows if (r["variant"], r["server"]) == ("default", "sync"))
    assert abs(default["sessions_per_request"] - 1) < 0.01
    assert abs(default["extra_statements_per_request"] - 2) < 0.01
    assert abs(default["vs_keepalive"] - 200 / 1650) < 0.01
    leak = next(r for r in rows if (r["variant"], r["server"]) == ("conn_max_age", "uvicorn"))
    assert leak["errors"] == 9 and leak["conns_peak"] == 96

    targets = bench_run.targets(rows, None)
    verdicts = {text: met for text, _value, met in targets}
    assert verdicts["gunicorn sync: keepalive_mw ≥ 8× Django default"] is True
    assert verdicts["gunicorn sync: keepalive_mw ≥ 0.97× CONN_MAX_AGE without health checks"] is False
    assert verdicts["uvicorn: keepalive_mw ≥ 1.0× native pool"] is True
    assert verdicts["uvicorn: keepalive_mw 0 errors"] is True

    data = {
        "timestamp": "test", "summary": rows, "micro": None, "files": [],
        "targets": targets,
        "config": {"kind": "custom", "rounds": 3, "duration": 5.0, "leak_duration": 3.0,
                   "max_connections": 100},
        "machine": {"cores": 2, "cpu": "cpu", "os": "os", "postgresql": "15", "auth": "scram-sha-256",
                    "python": "3", "django": "5", "psycopg": "3", "gunicorn": "x", "uvicorn": "y",
                    "gevent": "z", "load_tool": "wrk", "pgbouncer": None},
    }
    text = bench_run.markdown(data)
    assert "| server | variant | req/s | vs keepalive_mw |" in text
    assert "**keepalive_mw (defaults, health checks on)**" in text
    assert "(too many clients)" in text
    assert "MISSED" in text and "met" in text


def _machine():
    return {"cores": 2, "cpu": "cpu", "os": "os", "postgresql": "15", "auth": "scram-sha-256",
            "python": "3", "django": "5", "psycopg": "3", "gunicorn": "x", "uvicorn": "y",
            "gevent": "z", "load_tool": "wrk", "pgbouncer": "PgBouncer 1.18.0"}


def _fleet_results(pgbouncer_peak=6, failed=0):
    from bench import fleet

    def mode(name, variant, rps, peak, errors, pool_size):
        return {"mode": name, "variant": variant, "pool_size": pool_size, "rps": rps,
                "requests": int(rps * 6), "errors": errors, "max_ms": 120.0, "p99_ms": 40.0,
                "conns_peak": peak, "conns_after": peak, "samples": 100, "server_tracebacks": 0,
                "servers": [{"server": s, "clients": 4, "rps": rps / 4} for s in fleet.FLEET],
                "wall_s": 9.0}

    return {"config": {"servers": list(fleet.FLEET), "describe": fleet.describe(),
                       "pool_size": fleet.POOL_SIZE, "duration": 6.0, "path": "/", "clients": 20},
            "runs": [mode("pgbouncer", "keepalive_pgbouncer", 900, pgbouncer_peak, failed, 6),
                     mode("direct", "keepalive", 1000, 22, 0, None)],
            "failures": []}


def _chaos_results():
    from bench import chaos

    def cell(server, variant, fault, failed, requests, max_ms):
        return {"server": server, "variant": variant, "fault": fault, "failed": failed,
                "requests": requests, "max_ms": max_ms, "fault_s": 0.23}

    return {"config": {"duration": 12.0, "clients": 8, "path": "/",
                       "pgbouncer_settings": {"server_login_retry": "0"},
                       "variants": list(chaos.VARIANTS_RUN), "servers": ["sync"],
                       "faults": list(chaos.FAULTS)},
            "runs": [cell("sync", "keepalive", "restart", 90, 9000, 32.0),
                     cell("sync", "keepalive", "terminate", 1, 9100, 30.0),
                     cell("sync", "keepalive_pgbouncer", "restart", 0, 8000, 170.0),
                     cell("sync", "keepalive_pgbouncer", "pgbouncer_restart", 7, 8100, 36.0)],
            "failures": [{"server": "sync", "variant": "pool", "fault": "restart",
                          "error": "HarnessError: boom"}]}


def test_report_shows_the_slow_view_the_pgbouncer_rows_the_fleet_and_the_chaos_run():
    runs = [
        _run("pgbouncer", "sync", 1, 150, sessions=2, xacts=750 * 5),
        _run("keepalive_pgbouncer", "sync", 1, 1000),
        _run("keepalive", "sync", 1, 1600),
        _run("keepalive", "uvicorn", 1, 400, view="slow", clients=64, conns_peak=96,
             xacts=2000 * 2 + 10, served=2000),
        _run("keepalive_pgbouncer", "uvicorn", 1, 350, view="slow", clients=64, conns_peak=7,
             served=1750, xacts=1750 * 2),
    ]
    rows = bench_run.aggregate(runs)
    slow = next(r for r in rows if (r["variant"], r["view"]) == ("keepalive", "slow"))
    assert slow["clients"] == 64 and slow["vs_keepalive"] == 1.0
    assert slow["sessions_per_100rps"] == 24.0  # 96 sessions at 400 req/s
    assert abs(slow["extra_statements_per_request"] - 0.005) < 1e-9  # the slow view's own: 2
    via = next(r for r in rows if (r["variant"], r["view"]) == ("keepalive_pgbouncer", "slow"))
    assert via["sessions_per_100rps"] == 2.0 and via["vs_keepalive"] == 350 / 400
    fast = next(r for r in rows if (r["variant"], r["server"], r["view"]) == ("keepalive", "sync", "fast"))
    assert fast["vs_keepalive"] == 1.0  # the slow row is no reference for the fast view

    fleet_results = _fleet_results()
    found = bench_run.targets(rows, None, fleet_results)
    verdicts = {text: met for text, _value, met in found}
    assert verdicts["fleet through PgBouncer: server sessions ≤ default_pool_size (6)"] is True
    assert verdicts["fleet through one PgBouncer (transaction mode, default_pool_size 6): "
                    "0 failed requests"] is True
    assert verdicts["uvicorn, slow view: keepalive_mw (defaults, health checks on), server "
                    "sessions per 100 req/s"] is None
    missed = {text: met for text, _v, met in bench_run.targets(rows, None, _fleet_results(7, 2))}
    assert missed["fleet through PgBouncer: server sessions ≤ default_pool_size (6)"] is False

    data = {"timestamp": "test", "summary": rows, "micro": None, "files": [], "targets": found,
            "config": {"kind": "custom", "rounds": 1, "duration": 3.0, "leak_duration": 3.0,
                       "max_connections": 100},
            "machine": _machine(), "fleet": fleet_results, "chaos": _chaos_results()}
    text = bench_run.markdown(data)
    assert "| gunicorn sync (2w, 4c) | keepalive_mw through PgBouncer (transaction mode) | 1000 | " \
           "0.62× |" in text
    assert "### Slow view: uvicorn, 2 workers, 64 clients" in text
    assert "| **keepalive_mw (defaults, health checks on)** | 400 | 1.00× | 2.0 | 9.0 | 0 | 96 / 4 " \
           "| 24.0 | 0.002 |" in text
    assert "### Fleet: every server at once, one database" in text
    assert ("| through one PgBouncer (transaction mode, default_pool_size 6) | 900 | 5400 | 0 | 120 | "
            "6 / 6 | gunicorn sync 225, gunicorn sync 225, gunicorn sync 225, uvicorn 225 |") in text
    assert "### Chaos: faults under load" in text and "`server_login_retry = 0`" in text
    assert ("| gunicorn sync | **keepalive_mw (defaults, health checks on)** | 90 / 9000, longest "
            "0.03 s | 1 / 9100, longest 0.03 s | – |") in text
    assert ("| gunicorn sync | keepalive_mw through PgBouncer (transaction mode) | 0 / 8000, longest "
            "0.17 s | – | 7 / 8100, longest 0.04 s |") in text
    assert "Chaos cell sync/pool/restart failed**: HarnessError: boom" in text


def test_chart_draws_the_slow_view_and_the_fleet(tmp_path):
    import pytest

    from bench import report

    rows = bench_run.aggregate([
        _run("keepalive_pgbouncer", "sync", 1, 1000), _run("keepalive", "sync", 1, 1600),
        _run("keepalive", "uvicorn", 1, 400, view="slow", clients=64, conns_peak=96)])
    data = {"summary": rows, "fleet": _fleet_results(), "config": {"max_connections": 100},
            "machine": _machine()}
    groups = report._chart_groups(data)
    assert [label.splitlines()[0] for label, _bars in groups] == [
        "gunicorn sync", "uvicorn", "fleet, total: 3 × gunicorn sync + 1 × uvicorn"]
    assert groups[1][0] == "uvicorn\nslow view, 2 workers, 64 clients"
    assert set(groups[2][1]) == {"keepalive_pgbouncer", "keepalive"}
    pytest.importorskip("matplotlib")
    assert report.chart(data, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 10_000


def test_chaos_plan_and_pgbouncer_settings():
    from bench import chaos

    cells = chaos.plan(chaos.VARIANTS_RUN, chaos.SERVERS_RUN, chaos.FAULTS)
    # PgBouncer restarts only where there is one; CONN_MAX_AGE not under uvicorn (it leaks).
    assert ("sync", "keepalive", "pgbouncer_restart") not in cells
    assert ("sync", "keepalive_pgbouncer", "pgbouncer_restart") in cells
    assert ("uvicorn", "conn_max_age_checks", "restart") not in cells
    assert ("sync", "conn_max_age_checks", "restart") in cells
    assert len(cells) == 22
    args = bench_run.parse_args(["--only", "chaos"])
    assert args.chaos_pgbouncer == chaos.PGBOUNCER_SETTINGS and args.chaos_duration == 12
    args = bench_run.parse_args(["--only", "chaos", "--chaos-pgbouncer",
                                 "server_login_retry=1, query_wait_timeout=5",
                                 "--chaos-faults", "restart"])
    assert args.chaos_pgbouncer == {"server_login_retry": "1", "query_wait_timeout": "5"}
    assert args.chaos_faults == ["restart"]
    assert bench_run.parse_args(["--chaos-pgbouncer", ""]).chaos_pgbouncer == {}


def test_bench_arguments_choose_the_parts():
    assert bench_run.parse_args([]).parts == ["matrix", "slow", "celery", "micro", "fleet", "chaos"]
    quick = bench_run.parse_args(["--quick"])
    assert quick.parts == ["matrix", "slow", "celery", "micro"]
    assert "keepalive_pgbouncer" in quick.variants
    assert bench_run.parse_args(["--quick", "--chaos"]).parts[-1] == "chaos"
    assert bench_run.parse_args(["--quick", "--fleet", "--no-micro"]).parts == [
        "matrix", "slow", "celery", "fleet"]
    assert bench_run.parse_args(["--only", "fleet,chaos"]).parts == ["fleet", "chaos"]
    assert bench_run.parse_args(["--celery-tasks", "0"]).parts == [
        "matrix", "slow", "micro", "fleet", "chaos"]


def _demo(*args):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "example" / "demo.py"), "--requests", "20",
         "--clients", "2", *args],
        cwd=REPO_ROOT, env=_child_env(), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for heading in ("plain Django", "with keepalive_mw", "requests served", "connections opened",
                    "time taken", "keepalive_status"):
        assert heading in out, out
    assert "Traceback" not in out + proc.stderr
    served = next(line for line in out.splitlines() if "requests served" in line).split()
    opened = next(line for line in out.splitlines() if "connections opened" in line).split()
    assert served[-2:] == ["20", "20"], out
    assert int(opened[-2]) == 20, out  # plain Django: one connection per request
    assert 1 <= int(opened[-1]) <= 4, out  # keepalive_mw: one per worker (or thread) at most
    return out


def test_demo_runs_on_sqlite():
    out = _demo("--sqlite")
    assert "Database: SQLite file" in out, out


def test_demo_runs_on_an_embedded_postgresql_with_password_authentication():
    out = _demo()
    assert "Using SQLite" not in out, out
    assert "Database: PostgreSQL 18" in out and "scram-sha-256" in out, out
    assert "(postgresql, kept by keepalive_mw)" in out, out  # keepalive_status saw the server


def test_demo_says_in_one_line_why_it_falls_back_to_sqlite(monkeypatch, tmp_path, capsys):
    from example import demo

    def unavailable(tmpdir):
        raise demo.Unavailable("the embedded PostgreSQL server did not start: no shared memory")

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(demo, "start_embedded_postgresql", unavailable)
    env, text, _stop = demo.choose_database(tmp_path, sqlite=False)
    assert env["EXAMPLE_DB"] == "sqlite" and text.startswith("SQLite file")
    (line,) = capsys.readouterr().out.splitlines()
    assert line == ("Using SQLite instead of PostgreSQL: the embedded PostgreSQL server did not "
                    "start: no shared memory.")


def test_embedded_postgresql_refuses_logins_without_the_password(tmp_path):
    import psycopg
    import pytest

    from example import demo

    env, _text, stop = demo.start_embedded_postgresql(tmp_path)
    try:
        coordinates = dict(host=env["EXAMPLE_DB_HOST"], port=env["EXAMPLE_DB_PORT"],
                           user=env["EXAMPLE_DB_USER"], dbname=env["EXAMPLE_DB_NAME"])
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(**coordinates, password="wrong").close()
        with psycopg.connect(**coordinates, password=env["EXAMPLE_DB_PASSWORD"]) as conn:
            method = conn.execute("SELECT auth_method FROM pg_hba_file_rules"
                                  " WHERE type = 'local'").fetchone()[0]
        assert method == "scram-sha-256"
    finally:
        stop()
    assert not (tmp_path / "pgdata").exists()


def test_demo_reads_database_url(monkeypatch, tmp_path):
    from example import demo

    monkeypatch.setenv("DATABASE_URL", "postgres://alice:p%40ss@db.example:6543/shop")
    env, text = demo.database_env(tmp_path)
    assert env == {"EXAMPLE_DB": "postgresql", "EXAMPLE_DB_NAME": "shop", "EXAMPLE_DB_HOST": "db.example",
                   "EXAMPLE_DB_PORT": "6543", "EXAMPLE_DB_USER": "alice", "EXAMPLE_DB_PASSWORD": "p@ss",
                   "EXAMPLE_APPNAME": "keepalive-demo"}
    assert "shop" in text
    monkeypatch.delenv("DATABASE_URL")
    env, _text = demo.database_env(tmp_path)
    assert env == {"EXAMPLE_DB": "sqlite", "EXAMPLE_SQLITE_PATH": str(tmp_path / "demo.sqlite3")}


def _celery_run(variant, rnd, rate, sessions):
    return {"variant": variant, "round": rnd, "tasks": 1000, "concurrency": 2,
            "duration_s": 1000 / rate, "tasks_per_s": rate, "failed": 0, "sessions": sessions,
            "sessions_per_task": sessions / 1000, "served": 1000, "conns_peak": 2,
            "worker_tracebacks": 0, "wall_s": 10.0}


def test_celery_report_aggregates_rounds_and_reports_targets():
    from bench import workers

    runs = []
    for rnd, factor in ((1, 1.0), (2, 1.2), (3, 0.8)):
        runs += [_celery_run("default", rnd, 130 * factor, 1000),
                 _celery_run("conn_max_age", rnd, 135 * factor, 1000),
                 _celery_run("keepalive", rnd, 500 * factor, 2)]
    rows = workers.aggregate(runs)
    keepalive = next(r for r in rows if r["variant"] == "keepalive")
    assert keepalive["rounds"] == 3 and keepalive["tasks"] == 3000
    assert keepalive["tasks_per_s"] == 500 and keepalive["tasks_per_s_max"] == 600
    assert abs(keepalive["sessions_per_task"] - 0.002) < 1e-9
    default = next(r for r in rows if r["variant"] == "default")
    assert default["sessions_per_task"] == 1.0
    assert abs(default["vs_keepalive"] - 130 / 500) < 1e-9

    verdicts = {text: met for text, _value, met in workers.targets(rows)}
    assert verdicts == {"Celery: keepalive_mw ≥ 2.5× Django default's tasks/s": True,
                        "Celery: keepalive_mw ≤ 0.01 new sessions per task": True,
                        "Celery: keepalive_mw 0 failed tasks": True}
    runs[2]["sessions"] = 1000  # one round without reuse
    verdicts = {text: met for text, _value, met in workers.targets(workers.aggregate(runs))}
    assert verdicts["Celery: keepalive_mw ≤ 0.01 new sessions per task"] is False

    text = "\n".join(workers.markdown({"config": {"tasks": 1000, "rounds": 3}, "summary": rows,
                                       "failures": [{"variant": "keepalive", "round": 2,
                                                     "error": "HarnessError: boom"}]}))
    assert "| variant | tasks/s | vs keepalive_mw | new sessions/task |" in text
    assert "| **keepalive_mw (defaults, health checks on)** | 500 | 1.00× | 0.002 | 2 | 0 |" in text
    assert "| Django default (CONN_MAX_AGE=0) | 130 | 0.26× | 1.000 |" in text
    assert "keepalive round 2: HarnessError: boom" in text


def test_bench_arguments_choose_celery_cells():
    quick = bench_run.parse_args(["--quick"])
    assert quick.celery_tasks == 300 and "conn_max_age_reuse" not in quick.celery_variants
    full = bench_run.parse_args([])
    assert full.celery_tasks == 1000
    assert full.celery_variants == ["default", "conn_max_age", "conn_max_age_reuse", "keepalive"]
    assert bench_run.parse_args(["--celery-tasks", "0"]).celery_tasks == 0
