"""Django 6.1 rewrote ``ASGIHandler.handle()`` around an ``asyncio.TaskGroup``: the paths
where no ``response.close()`` comes, checked under uvicorn on 6.1 by name.

A streaming body that raises, and a client that hangs up while its view runs: the request
is a failure, its write is rolled back, and its connection returns to the pool clean.
"""

import socket
import time

import django
import pytest

from . import servers
from .test_hygiene import test_failed_stream_is_rolled_back as failed_stream

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(django.VERSION[:2] != (6, 1), reason="Django 6.1's ASGIHandler"),
]


@pytest.mark.parametrize("db", ["postgresql", "mysql"])
def test_django61_uvicorn_failing_stream_is_rolled_back(request, db, variant, unique_name):
    failed_stream(request, db, "uvicorn", variant, unique_name)


def _hang_up_during(port, path, after):
    """Send GET ``path`` and close the connection ``after`` seconds later, unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        time.sleep(after)


def _pids(port, count):
    """Backend pids of ``count`` requests, each after the previous one has ended."""
    pids = []
    for _ in range(count):
        status, body = servers.http_get(port, "/pid/")
        assert status == 200, body
        pids.append(body.strip())
        time.sleep(0.1)  # its request_finished runs after the client has the body
    return pids


def test_django61_uvicorn_client_disconnect_rolls_back_and_gives_back(pg_database, variant,
                                                                       unique_name):
    pg_database.truncate()
    env = pg_database.env(variant, unique_name, EXAMPLE_AUTOCOMMIT="0")
    with servers.Server("uvicorn", env, workers=1) as server:
        first = _pids(server.port, 3)
        for _ in range(3):  # the view writes, sleeps 0.6 s; the client leaves after 0.2 s
            _hang_up_during(server.port, "/sleep/?s=0.6", 0.2)
            time.sleep(0.8)  # the abandoned view finishes, then its request_finished
        servers.wait_for(lambda: "idle in transaction" not in servers.pg_session_states(
            pg_database.name, unique_name), 5, 0.1, "no idle-in-transaction session")
        after = _pids(server.port, 5)
        sessions = servers.pg_session_states(pg_database.name, unique_name)
        stderr = server.stderr()
    abandoned = pg_database.count_rows("sleep")
    evidence = (f"pids before: {first}; after: {after}; rows of abandoned "
                f"requests {abandoned}; sessions {dict(sessions)}\n"
                f"server stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert abandoned == 0, evidence  # an abandoned request is a failure: rolled back
    assert len(set(first + after)) == 1, evidence  # one session, given back and reused
    assert sum(sessions.values()) == 1, evidence  # none leaked by the abandoned requests
