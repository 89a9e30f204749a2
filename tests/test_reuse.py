"""Kept connections are handed from request to request, whatever thread serves them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from keepalive_mw import get_stats
from tests.helpers import (
    asgi_get,
    in_thread,
    my_admin,
    my_sessions,
    pg_admin,
    pg_sessions,
    wsgi_get,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.mark.parametrize("alias", ["default", "mysql", "sqlite"])
def test_wsgi_requests_on_fresh_threads_share_one_server_session(alias):
    pids = {in_thread(wsgi_get, f"/pid/{alias}/")[1] for _ in range(10)}
    assert len(pids) == 1
    stats = get_stats()[alias]
    assert stats["connections_opened"] == 1
    assert stats["connections_reused"] == 9


def test_asgi_requests_share_one_postgresql_session():
    admin = pg_admin()
    before = len(pg_sessions(admin))
    pids = {asgi_get("/pid/default/")[1] for _ in range(10)}
    assert len(pids) == 1
    sessions = pg_sessions(admin)
    assert len(sessions) == before + 1
    assert (int(pids.pop()), "idle") in sessions


def test_async_view_reuses_the_kept_session():
    assert asgi_get("/write/default/")[0] == 200
    for _ in range(5):
        assert asgi_get("/async/default/") == (200, "1")
    assert get_stats()["default"]["connections_opened"] == 1


def test_mariadb_sessions_do_not_grow_with_requests():
    admin = my_admin()
    before = len(my_sessions(admin))
    for _ in range(10):
        assert asgi_get("/pid/mysql/")[0] == 200
    assert len(my_sessions(admin)) == before + 1


def test_concurrent_requests_hold_at_most_their_peak_of_sessions():
    admin = pg_admin()
    before = len(pg_sessions(admin))
    held = get_stats().get("default", {}).get("connections_num", 0)  # this thread's
    with ThreadPoolExecutor(4) as executor:
        results = list(executor.map(lambda _: wsgi_get("/pid/default/"), range(200)))
    assert {status for status, _ in results} == {200}
    pids = {body for _, body in results}
    assert len(pids) <= 4
    assert len(pg_sessions(admin)) - before == len(pids)
    stats = get_stats()["default"]
    assert stats["connections_peak"] - held <= 4
    assert stats["connections_opened"] == len(pids)


def _taken(stats, alias):
    numbers = stats.get(alias, {})
    return (numbers.get("connections_opened", 0) + numbers.get("connections_reused", 0),
            numbers.get("connections_num", 0))


def test_a_request_that_touches_no_database_takes_no_connection():
    before = get_stats()
    assert in_thread(wsgi_get, "/noop/") == (200, "ok")
    after = get_stats()
    for alias in connections:
        assert _taken(after, alias) == _taken(before, alias)


def test_only_aliases_a_request_used_are_taken():
    before = get_stats()
    in_thread(wsgi_get, "/pid/default/")
    after = get_stats()
    assert _taken(after, "default")[0] == _taken(before, "default")[0] + 1
    for alias in connections:
        if alias != "default":
            assert _taken(after, alias) == _taken(before, alias)


def test_streaming_body_queries_use_the_same_session_and_it_is_given_back():
    status, body = in_thread(wsgi_get, "/stream/default/")
    assert status == 200
    assert len({line.split()[0] for line in body.splitlines()}) == 1
    assert in_thread(wsgi_get, "/pid/default/")[1] == body.split()[0]
    assert get_stats()["default"]["connections_idle"] == 1


def test_connection_is_detached_from_the_thread_after_the_request():
    def serve_then_look():
        wsgi_get("/pid/default/")
        return hasattr(connections._connections, "default")

    assert in_thread(serve_then_look) is False


def test_wrapper_created_while_models_were_imported_is_managed():
    # Django touches connection.ops while it imports models, before any AppConfig.ready().
    from keepalive_mw.pool import kept_of

    assert kept_of(connections["default"]) is not None


def test_a_request_adopts_what_its_thread_opened_outside_any_request():
    from tests.test_hygiene import open_transactions, rows_by_name

    def startup_then_serve():
        connections["pg_manual"].ensure_connection()  # e.g. a query at import time
        status, _ = wsgi_get("/write/pg_manual/")
        return status, hasattr(connections._connections, "pg_manual")

    assert in_thread(startup_then_serve) == (200, False)
    assert rows_by_name("pg_manual") == {"write": 1}
    assert open_transactions("pg_manual") == 0
    assert get_stats()["pg_manual"]["connections_idle"] == 1


def test_in_memory_sqlite_is_left_as_django_leaves_it():
    from keepalive_mw.pool import kept_of

    settings_dict = connections.settings["sqlite"]
    name = settings_dict["NAME"]
    settings_dict["NAME"] = ":memory:"
    try:
        def serve():
            wsgi_get("/noop/")
            wrapper = connections["sqlite"]
            return kept_of(wrapper), hasattr(connections._connections, "sqlite")

        assert in_thread(serve) == (None, True)
    finally:
        settings_dict["NAME"] = name
