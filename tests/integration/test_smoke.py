"""Every view of the example project answers under WSGI and ASGI servers, and no
transaction is left open afterwards."""

import pytest

from . import servers

pytestmark = pytest.mark.servers

PATHS = ["/", "/pid/", "/write/", "/read/", "/stream/", "/async/"]


@pytest.mark.parametrize("kind", ["sync", "uvicorn"])
def test_every_view_answers(pg_database, variant, unique_name, kind):
    env = pg_database.env(variant, unique_name)
    with servers.Server(kind, env, workers=1) as server:
        result = servers.run_load(server.port, PATHS, clients=2, total=len(PATHS) * 5)
        fail = servers.run_load(server.port, "/fail/", clients=1, total=2)
        try:
            servers.wait_for(
                lambda: "idle in transaction" not in servers.pg_session_states(pg_database.name, unique_name),
                5, 0.1, "no idle-in-transaction session")
        except servers.HarnessError:
            pass
        states = servers.pg_session_states(pg_database.name, unique_name)
        stderr = server.stderr()
    evidence = f"{kind}: {result.summary()}; /fail/: {fail.summary()}; sessions {dict(states)}\n{stderr[-3000:]}"
    print(evidence)
    assert not result.non_200, evidence
    assert dict(fail.statuses) == {500: 2}, evidence
    streams = [r.body for r in result.responses if r.path == "/stream/"]
    assert all(body.count("chunk") == 5 for body in streams), evidence
    assert all(r.body.startswith("rows=") for r in result.responses if r.path == "/async/"), evidence
    assert "idle in transaction" not in states, evidence
