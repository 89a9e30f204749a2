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
