"""Faults under load: a database restart and every session terminated in the middle of a
load, on a throwaway PostgreSQL cluster or MariaDB server. Requests that need a new connection while the server is
away wait for it (CONNECT_RETRY) instead of failing; only requests in flight may fail."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from . import servers

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(os.environ.get("CI") != "true" and (
        os.geteuid() != 0 or not shutil.which("runuser")
        or not (servers.PG_BIN / "initdb").exists()),
        reason="a throwaway cluster needs root, runuser and PostgreSQL's initdb"
        " (never skipped under CI=true)"),
]

CLIENTS = 8
LOAD_S = 6.0
FAULT_AT_S = 2.0
# The requests in flight when the server goes: one per client at most.
IN_FLIGHT = CLIENTS
CONNECT_RETRY = 10.0  # the default
DBNAME = "keepalive_example"


@pytest.fixture(scope="module")
def cluster():
    with servers.PgCluster() as cluster:
        servers.prepare_database("postgresql", DBNAME, port=cluster.port)
        yield cluster


@pytest.fixture(scope="module")
def mariadb():
    with servers.MariaDbServer() as server:
        servers.prepare_database("mysql", DBNAME, port=server.port)
        yield server


def _load_with_fault(server, fault) -> tuple[servers.LoadResult, float]:
    """LOAD_S seconds of load from CLIENTS clients, ``fault()`` FAULT_AT_S seconds in."""
    box: list = []
    loader = threading.Thread(target=lambda: box.append(
        servers.run_load(server.port, "/", clients=CLIENTS, duration=LOAD_S, timeout=30)))
    loader.start()
    time.sleep(FAULT_AT_S)  # load timing, not the behaviour under test
    fault_started = time.monotonic()
    fault()
    fault_s = time.monotonic() - fault_started
    loader.join(LOAD_S + 60)
    return box[0], fault_s


def _sessions(db, port, unique_name) -> set:
    if db == "postgresql":
        return servers.pg_pids(DBNAME, unique_name, port=port)
    return {row[0] for row in servers.mysql_processes(DBNAME, port)}


def _served(cluster, kind, env, fault_name, unique_name, db="postgresql"):
    with servers.Server(kind, env, workers=2) as server:
        servers.run_load(server.port, "/", clients=CLIENTS, total=4 * CLIENTS)  # warm
        before = _sessions(db, cluster.port, unique_name)
        if fault_name == "restart":
            fault = cluster.restart
        elif db == "postgresql":
            def fault():
                servers.pg_terminate(DBNAME, unique_name, port=cluster.port)
        else:
            def fault():
                servers.mysql_terminate(DBNAME, port=cluster.port)
        result, fault_s = _load_with_fault(server, fault)
        after = _sessions(db, cluster.port, unique_name)
        stderr = server.stderr()
    longest = max(r.elapsed for r in result.responses)
    evidence = (f"{db} {kind}, {fault_name} ({fault_s:.2f} s) under load: {result.summary()}; "
                f"failed {len(result.non_200)}, longest request {longest:.2f} s; sessions "
                f"before {sorted(before)}, after {sorted(after)}\n"
                f"server stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    return result, longest, before, after, evidence


@pytest.mark.parametrize("kind", ["sync", "uvicorn"])
@pytest.mark.parametrize("fault_name", ["restart", "terminate"])
def test_faults_under_load_fail_only_requests_in_flight(cluster, kind, fault_name, variant,
                                                         unique_name):
    env = servers.example_env("postgresql", EXAMPLE_DB_NAME=DBNAME,
                              EXAMPLE_DB_PORT=cluster.port, EXAMPLE_VARIANT=variant,
                              EXAMPLE_APPNAME=unique_name)
    result, longest, before, after, evidence = _served(cluster, kind, env, fault_name,
                                                       unique_name)
    assert before and after and not (before & after), evidence  # the fault was real
    assert len(result.responses) > 10 * CLIENTS, evidence
    assert len(result.non_200) <= IN_FLIGHT, evidence
    assert longest < CONNECT_RETRY + 5, evidence  # nobody waits past the bound


@pytest.mark.parametrize("fault_name", ["restart", "terminate"])
def test_mariadb_faults_under_load_fail_only_requests_in_flight(mariadb, fault_name, variant,
                                                                unique_name):
    env = servers.example_env("mysql", EXAMPLE_DB_NAME=DBNAME, EXAMPLE_DB_PORT=mariadb.port,
                              EXAMPLE_VARIANT=variant, EXAMPLE_APPNAME=unique_name)
    result, longest, before, after, evidence = _served(mariadb, "sync", env, fault_name,
                                                       unique_name, db="mysql")
    # A restarted server numbers its threads from 1 again: only terminate can compare.
    assert before and after and (fault_name == "restart" or not (before & after)), evidence
    assert len(result.responses) > 10 * CLIENTS, evidence
    assert len(result.non_200) <= IN_FLIGHT, evidence
    assert longest < CONNECT_RETRY + 5, evidence


def test_without_connect_retry_a_restart_fails_requests(cluster, variant, unique_name):
    """What the retry is for: with CONNECT_RETRY = 0 every request that needs a connection
    while the server restarts fails."""
    env = servers.example_env("postgresql", EXAMPLE_DB_NAME=DBNAME,
                              EXAMPLE_DB_PORT=cluster.port, EXAMPLE_VARIANT=variant,
                              EXAMPLE_APPNAME=unique_name, KEEPALIVE_CONNECT_RETRY="0")
    result, *_, evidence = _served(cluster, "sync", env, "restart", unique_name)
    assert len(result.non_200) > IN_FLIGHT, evidence
