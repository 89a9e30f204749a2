"""(b) Hygiene with AUTOCOMMIT=False: successful requests are committed, failed ones
rolled back, and no transaction is left open between requests."""

import pytest

from . import servers

pytestmark = pytest.mark.servers

# 50 x (write, read, fail, write, read) = 100 /write/, 100 /read/, 50 /fail/
PATTERN = ["/write/", "/read/", "/fail/", "/write/", "/read/"]
TOTAL = 250
SETTLE = 5.0  # seconds for end-of-request handling of the last requests to finish


def _open_transactions(database, appname):
    if database.db == "postgresql":
        states = servers.pg_session_states(database.name, appname)
        return {s: n for s, n in states.items() if s.startswith("idle in transaction") or s == "active"}
    return servers.mysql_open_transactions(database.name)


def _settled(db, database, unique_name):
    """Open transactions and sessions once the last requests had a bounded moment to end:
    the response reaches the client before request_finished runs (WSGI close())."""
    try:
        servers.wait_for(lambda: not _open_transactions(database, unique_name), SETTLE, 0.1,
                         "no open transactions")
    except servers.HarnessError:
        pass
    open_trx = _open_transactions(database, unique_name)
    if db == "postgresql":
        return open_trx, dict(servers.pg_session_states(database.name, unique_name))
    return open_trx, servers.mysql_processes(database.name)


@pytest.mark.parametrize("kind", ["sync", "uvicorn"])
@pytest.mark.parametrize("db", ["postgresql", "mysql"])
def test_commit_on_success_rollback_on_failure(request, db, kind, variant, unique_name):
    database = request.getfixturevalue("pg_database" if db == "postgresql" else "mysql_database")
    database.truncate()
    env = database.env(variant, unique_name, EXAMPLE_AUTOCOMMIT="0")
    with servers.Server(kind, env, workers=2) as server:
        result = servers.run_load(server.port, PATTERN, clients=4, total=TOTAL)
        open_trx, sessions = _settled(db, database, unique_name)
        writes = database.count_rows("write")
        fails = database.count_rows("fail")
        stderr = server.stderr()

    by_path = result.by_path()
    evidence = (f"{db}/{kind}: {result.summary()}; rows write={writes} fail={fails}; "
                f"open transactions after load: {open_trx}; sessions: {sessions}\n"
                f"server stderr (tail):\n{stderr[-2000:]}")
    print(evidence)
    assert len(result.responses) == TOTAL, evidence
    assert dict(by_path["/write/"]) == {200: 100}, evidence
    assert dict(by_path["/read/"]) == {200: 100}, evidence
    assert dict(by_path["/fail/"]) == {500: 50}, evidence
    assert writes == 100, evidence
    assert fails == 0, evidence
    assert not open_trx, evidence
    assert sessions, f"no kept connection at all: {evidence}"


@pytest.mark.parametrize("kind", ["sync", "uvicorn"])
@pytest.mark.parametrize("db", ["postgresql", "mysql"])
def test_failed_stream_is_rolled_back(request, db, kind, variant, unique_name):
    """A streamed body that raises after the 200 status line went out is a failure: its
    write is rolled back and its connection returns clean. (Under ASGI Django never
    calls response.close() when the body raises, so request_finished is not sent.)"""
    database = request.getfixturevalue("pg_database" if db == "postgresql" else "mysql_database")
    database.truncate()
    env = database.env(variant, unique_name, EXAMPLE_AUTOCOMMIT="0")
    with servers.Server(kind, env, workers=2) as server:
        result = servers.run_load(server.port, ["/stream-fail/", "/write/"], clients=4, total=40)
        open_trx, sessions = _settled(db, database, unique_name)
        stream_rows = database.count_rows("stream_fail")
        writes = database.count_rows("write")
    evidence = (f"{db}/{kind}: {result.summary()}; rows stream_fail={stream_rows} write={writes}; "
                f"open transactions after load: {open_trx}; sessions: {sessions}")
    print(evidence)
    by_path = result.by_path()
    assert dict(by_path["/write/"]) == {200: 20}, evidence
    assert set(by_path["/stream-fail/"]) <= {200, None}, evidence  # body cut short
    assert writes == 20, evidence
    assert stream_rows == 0, evidence
    assert not open_trx, evidence
    assert len(sessions) <= 8, f"connections leaked out of the pool: {evidence}"
