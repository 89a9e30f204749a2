"""Release mode "transaction" in real servers: server sessions follow in-flight queries,
not in-flight requests. Functional bounds only, no speed: the benchmark measures that."""

import json

import pytest

from . import servers

pytestmark = pytest.mark.servers

CLIENTS = 24
SAFETY_ABORT = 40  # stop the load before a leaking server exhausts max_connections


def _env(pg_database, variant, unique_name, release, **extra):
    return pg_database.env(variant, unique_name, KEEPALIVE_RELEASE=json.dumps(release), **extra)


@pytest.mark.parametrize("release, bound", [("request", None), ("transaction", 4)])
def test_slow_async_view_holds_sessions_only_while_it_queries(pg_database, variant,
                                                              unique_name, release, bound):
    """/slow/: a query, 100 ms of await, a query. 24 clients keep ~24 requests in flight;
    in request mode each holds a session through its await, in transaction mode only
    through its queries: 4 sessions per worker serve them all, none failing. (Unbounded,
    the first burst of concurrent first queries opens what it needs, and those sessions
    stay until their idle timeout.)"""
    env = _env(pg_database, variant, unique_name, release,
               KEEPALIVE_MAX_CONNECTIONS=json.dumps(bound))
    with servers.Server("uvicorn", env, workers=2) as server:
        with servers.PgActivitySampler(pg_database.name, unique_name,
                                       abort_above=SAFETY_ABORT) as sampler:
            result = servers.run_load(server.port, "/slow/?ms=100", clients=CLIENTS,
                                      duration=4, stop_event=sampler.abort_event)
        stderr = server.stderr()
    evidence = (f"{release}, MAX_CONNECTIONS {bound}: {result.summary()}; sampled peak "
                f"{sampler.peak} sessions, {len(sampler.pids_seen)} seen\n"
                f"server stderr:\n{stderr[-3000:]}")
    print(evidence)
    assert not result.aborted and result.responses, evidence
    assert not result.non_200, evidence
    if release == "transaction":
        assert sampler.peak <= 8, evidence
    else:
        assert sampler.peak >= CLIENTS // 2, evidence


@pytest.mark.parametrize("kind, server_args", [
    ("uvicorn", dict(workers=2)),
    ("gevent", dict(workers=2)),
    ("gthread", dict(workers=2, threads=4)),
])
def test_sessions_terminated_between_requests_fail_none(pg_database, variant, unique_name,
                                                        kind, server_args):
    env = _env(pg_database, variant, unique_name, "transaction")
    paths = ["/slow/?ms=20", "/"] if kind == "uvicorn" else ["/pid/", "/"]
    with servers.Server(kind, env, **server_args) as server:
        before = servers.run_load(server.port, paths, clients=8, total=200)
        killed = servers.pg_terminate(pg_database.name, unique_name)
        after = servers.run_load(server.port, paths, clients=8, total=400)
        stderr = server.stderr()
    evidence = (f"{kind} before: {before.summary()}; terminated {len(killed)}; after: "
                f"{after.summary()}\nserver stderr:\n{stderr[-3000:]}")
    print(evidence)
    assert killed, evidence
    assert len(after.responses) == 400 and not after.non_200, evidence


@pytest.mark.parametrize("kind", ["sync", "uvicorn"])
def test_autocommit_off_keeps_its_hygiene_in_transaction_mode(pg_database, variant,
                                                             unique_name, kind):
    """AUTOCOMMIT False is never idle between transactions: released per request
    (keepalive_mw.W016), committed on success, rolled back on failure."""
    pg_database.truncate()
    env = _env(pg_database, variant, unique_name, "transaction", EXAMPLE_AUTOCOMMIT="0")
    pattern = ["/write/", "/read/", "/fail/", "/write/", "/read/"]
    with servers.Server(kind, env, workers=2) as server:
        result = servers.run_load(server.port, pattern, clients=4, total=250)
        try:
            servers.wait_for(lambda: "idle in transaction" not in servers.pg_session_states(
                pg_database.name, unique_name), 5.0, 0.1, "no open transactions")
        except servers.HarnessError:
            pass
        states = servers.pg_session_states(pg_database.name, unique_name)
        writes = pg_database.count_rows("write")
        fails = pg_database.count_rows("fail")
    by_path = result.by_path()
    evidence = f"{kind}: {result.summary()}; write={writes} fail={fails}; states {dict(states)}"
    print(evidence)
    assert dict(by_path["/write/"]) == {200: 100}, evidence
    assert dict(by_path["/fail/"]) == {500: 50}, evidence
    assert writes == 100 and fails == 0, evidence
    assert not any(state.startswith("idle in transaction") for state in states), evidence
