"""Channels consumers under a real ASGI server (daphne, example/asgi_channels.py) whose
database work goes through ``database_sync_to_async`` (example/shop/consumers.py): each call
commits when it returns and rolls back when it raises, leaves no session idle in
transaction, and reuses connections across calls."""

from __future__ import annotations

import pytest

from . import servers, workers

pytestmark = pytest.mark.servers

CALLS = 100  # of each kind
CLIENTS = 4
MAX_SESSIONS = CLIENTS  # one daphne process, at most one call per client at a time
INSERT, FAIL = "/channels/insert/", "/channels/fail/"


def test_calls_commit_on_return_and_roll_back_on_raise(pg_database, variant, unique_name):
    pg_database.truncate()
    env = pg_database.env(variant, unique_name, EXAMPLE_AUTOCOMMIT="0")
    with workers.DaphneServer(env) as server:
        result = servers.run_load(server.port, [INSERT, FAIL], clients=CLIENTS, total=2 * CALLS)
        open_trx = workers.settled_open_transactions(pg_database, unique_name)
        sessions = dict(servers.pg_session_states(pg_database.name, unique_name))
        stderr = server.stderr()
    rows_ok, rows_failed, rows = workers.rows_kept(pg_database, "channels_ok", "channels_fail",
                                                   CALLS, open_trx)
    evidence = (f"{result.summary()}; {rows}; sessions {sessions}\n"
                f"server stderr (tail):\n{stderr[-2000:]}")
    print(evidence)
    by_path = result.by_path()
    assert dict(by_path[INSERT]) == {200: CALLS}, evidence
    assert dict(by_path[FAIL]) == {500: CALLS}, evidence
    assert rows_ok == CALLS, evidence
    assert rows_failed == 0, evidence
    assert not open_trx, evidence


def test_calls_reuse_connections(pg_database, variant, unique_name):
    env = pg_database.env(variant, unique_name)
    with workers.DaphneServer(env) as server:
        with servers.PgActivitySampler(pg_database.name, unique_name) as sampler:
            result = servers.run_load(server.port, INSERT, clients=CLIENTS, total=2 * CALLS,
                                      keepalive=False)
        stderr = server.stderr()
    used = set(result.bodies(INSERT))
    evidence = (f"{result.summary()}; {len(used)} sessions used, peak {sampler.peak} "
                f"connected\nserver stderr (tail):\n{stderr[-2000:]}")
    print(evidence)
    assert dict(result.statuses) == {200: 2 * CALLS}, evidence
    assert len(used) <= MAX_SESSIONS, evidence
    assert sampler.peak <= MAX_SESSIONS, evidence
