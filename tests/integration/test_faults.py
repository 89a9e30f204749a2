"""(c) Faults: kept connections killed by the server (pg_terminate_backend / KILL, a
restart) are detected and replaced without failing requests."""

import os
import shutil

import pytest

from . import servers

pytestmark = pytest.mark.servers

WORKERS = 2
WARMUP = 40
AFTER = 40


def _sessions(db, dbname, appname, port=None):
    if db == "postgresql":
        return servers.pg_pids(dbname, appname, port=port)
    return {row[0] for row in servers.mysql_processes(dbname)}


def _warm_up(server, db, dbname, appname, port=None):
    """WARMUP requests, then more (bounded) until every worker holds a connection:
    sync workers compete for accept(), one of them may serve a whole small burst."""
    for _ in range(10):
        result = servers.run_load(server.port, "/", clients=4, total=WARMUP)
        assert not result.non_200, f"warm-up failed: {result.summary()}\n{server.stderr()}"
        sessions = _sessions(db, dbname, appname, port)
        if len(sessions) >= WORKERS:
            return sessions
    return sessions


@pytest.mark.parametrize("db", ["postgresql", "mysql"])
def test_terminated_sessions_are_replaced(request, db, variant, unique_name):
    database = request.getfixturevalue("pg_database" if db == "postgresql" else "mysql_database")
    env = database.env(variant, unique_name)
    with servers.Server("sync", env, workers=WORKERS) as server:
        warm = _warm_up(server, db, database.name, unique_name)
        if db == "postgresql":
            killed = servers.pg_terminate(database.name, unique_name)
        else:
            killed = servers.mysql_terminate(database.name)
        result = servers.run_load(server.port, "/", clients=4, total=AFTER)
        pid_result = servers.run_load(server.port, "/pid/", clients=2, total=4)
        stderr = server.stderr()
    new_pids = {int(b) for b in pid_result.bodies()}
    evidence = (f"{db}: kept after warm-up {sorted(warm)}, terminated {sorted(killed)}; "
                f"after: {result.summary()}; pids now {sorted(new_pids)}\n"
                f"server stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert len(killed) == WORKERS, f"expected one kept connection per worker: {evidence}"
    assert len(result.responses) == AFTER, evidence
    assert not result.non_200, evidence
    assert not (new_pids & killed), evidence


@pytest.mark.skipif(os.environ.get("CI") != "true" and (
                        os.geteuid() != 0 or not shutil.which("runuser")
                        or not (servers.PG_BIN / "initdb").exists()),
                    reason="a throwaway cluster needs root, runuser and PostgreSQL's initdb"
                    " (never skipped under CI=true)")
def test_database_restart_is_survived(variant, unique_name):
    with servers.PgCluster() as cluster:
        dbname = "keepalive_example"
        servers.prepare_database("postgresql", dbname, port=cluster.port)
        env = servers.example_env("postgresql", EXAMPLE_DB_NAME=dbname,
                                  EXAMPLE_DB_PORT=cluster.port, EXAMPLE_VARIANT=variant,
                                  EXAMPLE_APPNAME=unique_name)
        with servers.Server("sync", env, workers=WORKERS) as server:
            before = _warm_up(server, "postgresql", dbname, unique_name, port=cluster.port)
            cluster.restart()
            result = servers.run_load(server.port, "/", clients=4, total=AFTER)
            after = servers.pg_pids(dbname, unique_name, port=cluster.port)
            stderr = server.stderr()
    evidence = (f"sessions before restart {sorted(before)}, after {sorted(after)}; "
                f"after restart: {result.summary()}\nserver stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert len(before) == WORKERS, f"expected one kept connection per worker: {evidence}"
    assert len(result.responses) == AFTER, evidence
    assert not result.non_200, evidence
    assert after and not (after & before), evidence


def test_server_side_idle_timeout_is_survived(pg_database, variant, unique_name):
    """PostgreSQL's idle_session_timeout ends kept connections while they wait."""
    with servers.pg_connect() as conn:
        conn.execute(f'ALTER ROLE postgres IN DATABASE "{pg_database.name}" '
                     "SET idle_session_timeout = '700ms'")
    try:
        env = pg_database.env(variant, unique_name)
        with servers.Server("sync", env, workers=WORKERS) as server:
            warm = _warm_up(server, "postgresql", pg_database.name, unique_name)
            servers.wait_for(lambda: not servers.pg_pids(pg_database.name, unique_name), 10, 0.1,
                             "the server to end idle sessions")
            result = servers.run_load(server.port, "/", clients=4, total=AFTER)
            stderr = server.stderr()
    finally:
        with servers.pg_connect() as conn:
            conn.execute(f'ALTER ROLE postgres IN DATABASE "{pg_database.name}" '
                         "RESET idle_session_timeout")
    evidence = (f"kept after warm-up {sorted(warm)}; after the timeout: {result.summary()}\n"
                f"server stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert warm, evidence
    assert not result.non_200, evidence
