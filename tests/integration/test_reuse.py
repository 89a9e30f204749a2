"""(a) Reuse: connections are kept per process and shared by requests, whatever the
thread or greenlet that serves them (uvicorn, gunicorn gevent, gunicorn gthread)."""

import threading

import pytest

from . import servers

pytestmark = pytest.mark.servers

REQUESTS = 800
CLIENTS = 8
MAX_CONNECTIONS = 16  # 2 processes x 8 requests in flight at most
SAFETY_ABORT = 32  # stop the load before a leaking server exhausts max_connections


@pytest.mark.parametrize(
    "kind, server_args",
    [
        ("uvicorn", dict(workers=2)),
        ("gevent", dict(workers=2)),
        ("gthread", dict(workers=2, threads=4)),
    ],
)
def test_connections_are_reused_across_requests(pg_database, variant, unique_name, kind, server_args):
    env = pg_database.env(variant, unique_name)
    with servers.Server(kind, env, **server_args) as server:
        abort = threading.Event()
        with servers.PgActivitySampler(pg_database.name, unique_name, abort_above=SAFETY_ABORT,
                                       abort_event=abort) as sampler:
            # Connection: close -> a fresh HTTP connection (under gevent: a fresh greenlet)
            # for every request, the hardest case for thread/greenlet-bound connections.
            result = servers.run_load(server.port, "/pid/", clients=CLIENTS, total=REQUESTS,
                                      stop_event=abort, keepalive=False)
        stderr = server.stderr()

    pids = set(result.bodies("/pid/"))
    evidence = (f"{kind}: {result.summary()}; sampled peak {sampler.peak} connections, "
                f"{len(sampler.pids_seen)} pids seen by the sampler, {len(pids)} distinct pids "
                f"in responses\nserver stderr:\n{stderr[-3000:]}")
    print(evidence)
    assert not result.aborted, f"aborted: more than {SAFETY_ABORT} connections. {evidence}"
    assert len(result.responses) == REQUESTS, evidence
    assert not result.non_200, evidence
    assert sampler.peak <= MAX_CONNECTIONS, evidence
    assert len(pids) <= MAX_CONNECTIONS, evidence
    assert len(result.responses) >= 20 * len(pids), evidence
