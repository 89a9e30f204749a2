"""A forked child never uses, nor ends, its parent's kept connections."""

from __future__ import annotations

import os

import pytest
from django.db import connections

from keepalive_mw import get_stats
from keepalive_mw.pool import kept_of
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


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_child_keeps_the_wrapper_objects_of_the_forking_thread():
    """As in plain Django, connections[alias] in the child is the object the forking thread
    held, with what was stored on it; only its session is the child's own."""
    admin = pg_admin()
    wrapper = connections["default"]
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        parent_pid = cursor.fetchone()[0]
    wrapper.stored_by_the_parent = "kept"
    parent_object = id(wrapper)

    def child():
        same = connections["default"]
        with same.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        opened = get_stats()["default"]
        served = wsgi_get("/pid/default/")[1]  # the next request on this thread adopts it
        after = get_stats()["default"]
        return " ".join(map(str, [
            id(same) == parent_object, getattr(same, "stored_by_the_parent", None),
            kept_of(same) is not None, opened["connections_num"], opened["connections_opened"],
            pid, served, after["connections_idle"], after["connections_opened"],
        ]))

    out = in_child(child)
    assert not out.startswith("error"), out
    same, stored, kept, num, opened, pid, served, idle, opened_after = out.split()
    assert (same, stored, kept) == ("True", "kept", "True"), out
    assert (num, opened) == ("1", "1"), out  # counted in the child's pool, opened through it
    assert int(pid) != parent_pid and served == pid, out  # its own session, reused
    assert (idle, opened_after) == ("1", "1"), out  # given back at the request's end
    assert parent_pid in {p for p, _ in pg_sessions(admin)}  # the parent's session lives on
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] == parent_pid
    assert wrapper.stored_by_the_parent == "kept"
