"""(d) Extra statements: keeping connections alive costs (almost) no extra round trip
per request. Measured server-side as transactions in pg_stat_database."""

import pytest

from . import servers

pytestmark = pytest.mark.servers

WARMUP = 40
REQUESTS = 500
TOLERANCE = 0.02


def test_no_extra_transactions_per_request(pg_database, variant, unique_name):
    # Counters of a database are settled only when no backend of it is left with
    # pending statistics: read before the server starts and after it has stopped (an
    # exiting backend flushes). The window therefore includes warm-up and connection
    # set-up: the warm-up requests are counted as requests, set-up as overhead.
    before = servers.pg_settled_xacts(pg_database.name, interval=0.6)
    env = pg_database.env(variant, unique_name)
    with servers.Server("sync", env, workers=2) as server:
        warm = servers.run_load(server.port, "/pid/", clients=4, total=WARMUP)
        connections_after_warmup = servers.pg_pids(pg_database.name, unique_name)
        result = servers.run_load(server.port, "/pid/", clients=4, total=REQUESTS)
        stderr = server.stderr()
    after = servers.pg_settled_xacts(pg_database.name)
    requests = len(warm.responses) + len(result.responses)
    delta = after - before
    extra = delta / requests - 1
    evidence = (f"{delta} transactions for {requests} requests ({WARMUP} warm-up + {REQUESTS}) "
                f"of 1 autocommit statement: {extra:+.4f} extra per request; "
                f"{len(connections_after_warmup)} connections after warm-up, "
                f"{len(set(result.bodies()))} distinct pids; {result.summary()}\n"
                f"server stderr (tail):\n{stderr[-2000:]}")
    print(evidence)
    assert not warm.non_200 and not result.non_200, evidence
    assert extra <= TOLERANCE, evidence
