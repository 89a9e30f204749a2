"""A forked child never uses, nor ends, its parent's kept connections."""

from __future__ import annotations

import os

import pytest
from django.db import connections

from tests.helpers import in_thread, pg_admin, pg_sessions, wsgi_get

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def in_child(fn):
    """Run ``fn`` in a forked child; return what it printed (its str result)."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            out = str(fn())
        except BaseException as exc:  # noqa: BLE001
            out = f"error {exc!r}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    os.waitpid(child, 0)
    return out


# Forking with threads running (the housekeeper) is the situation this test is about.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_child_opens_its_own_connections_and_parent_sessions_survive():
    admin = pg_admin()
    kept = in_thread(wsgi_get, "/pid/default/")[1]  # idle in the pool
    with connections["default"].cursor() as cursor:  # held by this (forking) thread
        cursor.execute("SELECT pg_backend_pid()")
        held = str(cursor.fetchone()[0])

    def child():
        pids = {in_thread(wsgi_get, "/pid/default/")[1] for _ in range(3)}
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pids.add(str(cursor.fetchone()[0]))
        return " ".join(sorted(pids))

    child_pids = in_child(child).split()
    assert not child_pids[0].startswith("error"), child_pids
    assert kept not in child_pids and held not in child_pids
    alive = {str(pid) for pid, _ in pg_sessions(admin)}
    assert {kept, held} <= alive  # the child's exit ended none of the parent's sessions
    assert in_thread(wsgi_get, "/pid/default/")[1] == kept
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")  # the held connection still works in the parent
