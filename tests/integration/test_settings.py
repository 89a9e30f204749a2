"""Settings seen from outside: KEEPALIVE_MAX_AGE=0, KEEPALIVE_END_OF_REQUEST="rollback",
KEEPALIVE_MAX_CONNECTIONS and the per-alias opt-out, on real servers."""

import threading

import pytest

from . import servers

pytestmark = pytest.mark.servers


@pytest.fixture(autouse=True)
def _keepalive_only(variant):
    if variant != "keepalive":
        pytest.skip("keepalive_mw settings: only meaningful for the keepalive variant")


def test_max_age_zero_closes_after_every_request(pg_database, variant, unique_name):
    env = pg_database.env(variant, unique_name, KEEPALIVE_MAX_AGE="0")
    with servers.Server("sync", env, workers=2) as server:
        result = servers.run_load(server.port, "/pid/", clients=4, total=60)
        try:
            servers.wait_for(lambda: not servers.pg_pids(pg_database.name, unique_name), 3, 0.05,
                             "no kept session")
        except servers.HarnessError:
            pass
        left = servers.pg_pids(pg_database.name, unique_name)
    pids = set(result.bodies())
    evidence = f"{result.summary()}; {len(pids)} distinct pids; sessions left {sorted(left)}"
    print(evidence)
    assert not result.non_200, evidence
    assert len(pids) == len(result.responses), evidence
    assert not left, evidence


def test_rollback_policy_discards_writes(pg_database, variant, unique_name):
    pg_database.truncate()
    env = pg_database.env(variant, unique_name, EXAMPLE_AUTOCOMMIT="0",
                          KEEPALIVE_END_OF_REQUEST='"rollback"')
    with servers.Server("uvicorn", env, workers=1) as server:
        result = servers.run_load(server.port, ["/write/", "/read/"], clients=4, total=40)
        try:
            servers.wait_for(lambda: "idle in transaction" not in
                             servers.pg_session_states(pg_database.name, unique_name), 5, 0.1, "")
        except servers.HarnessError:
            pass
        states = dict(servers.pg_session_states(pg_database.name, unique_name))
    rows = pg_database.count_rows()
    evidence = f"{result.summary()}; rows {rows}; sessions {states}"
    print(evidence)
    assert not result.non_200, evidence
    assert rows == 0, evidence
    assert "idle in transaction" not in states and states, evidence


def test_max_connections_bounds_an_asgi_process(pg_database, variant, unique_name):
    env = pg_database.env(variant, unique_name, KEEPALIVE_MAX_CONNECTIONS="2")
    with servers.Server("uvicorn", env, workers=1) as server:
        abort = threading.Event()
        with servers.PgActivitySampler(pg_database.name, unique_name, abort_above=32,
                                       abort_event=abort) as sampler:
            result = servers.run_load(server.port, ["/pid/", "/", "/async/", "/stream/"],
                                      clients=8, total=200, stop_event=abort, keepalive=False)
        stderr = server.stderr()
    pids = set(result.bodies("/pid/"))
    evidence = (f"{result.summary()}; sampled peak {sampler.peak}; pids {sorted(pids)}\n"
                f"server stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert not result.non_200, evidence
    assert sampler.peak <= 2, evidence
    assert len(sampler.pids_seen) <= 2, evidence


def test_alias_opt_out_behaves_like_django(pg_database, variant, unique_name):
    env = pg_database.env(variant, unique_name, EXAMPLE_DB_KEEPALIVE="0")
    with servers.Server("sync", env, workers=2) as server:
        result = servers.run_load(server.port, "/pid/", clients=4, total=40)
    pids = set(result.bodies())
    evidence = f"{result.summary()}; {len(pids)} distinct pids"
    print(evidence)
    assert not result.non_200, evidence
    assert len(pids) == len(result.responses), evidence  # CONN_MAX_AGE=0: one per request
