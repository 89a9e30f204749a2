"""No transaction, lock or session state outlives the request that started it."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

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


def rows_by_name(alias: str) -> dict[str, int]:
    """Committed rows as another session sees them."""
    if connections[alias].vendor == "postgresql":
        db = settings.DATABASES["default"]
        with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                             dbname=connections["default"].settings_dict["NAME"]) as conn:
            return dict(conn.execute(
                "SELECT name, count(*) FROM testapp_item GROUP BY name").fetchall())
    admin = my_admin()
    with admin.cursor() as cursor:
        cursor.execute("SELECT name, count(*) FROM `%s`.testapp_item GROUP BY name"
                       % connections["mysql"].settings_dict["NAME"])
        return {name: int(n) for name, n in cursor.fetchall()}


def open_transactions(alias: str) -> int:
    if connections[alias].vendor == "postgresql":
        return sum(state.startswith("idle in transaction") for _, state in pg_sessions(pg_admin()))
    return sum(in_trx for _, in_trx in my_sessions(my_admin()))


@pytest.mark.parametrize("get", [wsgi_get, asgi_get], ids=["wsgi", "asgi"])
@pytest.mark.parametrize("alias", ["pg_manual", "mysql_manual"])
def test_autocommit_off_commits_successes_and_rolls_back_failures(alias, get):
    paths = [f"/write/{alias}/"] * 20 + [f"/fail/{alias}/"] * 10 + [f"/read/{alias}/"] * 20
    with ThreadPoolExecutor(4) as executor:
        statuses = list(executor.map(lambda path: get(path)[0], paths))
    assert statuses.count(200) == 40 and statuses.count(500) == 10
    assert rows_by_name(alias) == {"write": 20}
    assert open_transactions(alias) == 0
    stats = get_stats()[alias]
    assert stats["transactions_rolled_back"] == 10
    assert stats["transactions_committed"] == 40


@pytest.mark.parametrize("path", ["status500", "stream_fail"])
def test_5xx_and_failing_streams_roll_back(path):
    status, _ = in_thread(wsgi_get, f"/{path}/pg_manual/")
    assert path == "stream_fail" or status == 503
    assert rows_by_name("pg_manual") == {}
    assert open_transactions("pg_manual") == 0


@override_settings(KEEPALIVE_END_OF_REQUEST="rollback")
def test_rollback_policy_rolls_back_successful_requests_too():
    assert in_thread(wsgi_get, "/write/pg_manual/")[0] == 200
    assert rows_by_name("pg_manual") == {}
    assert open_transactions("pg_manual") == 0


def test_without_middleware_open_transactions_roll_back():
    with override_settings(MIDDLEWARE=[]):
        from django.core.handlers.wsgi import WSGIHandler
        from django.test import RequestFactory

        handler = WSGIHandler()

        def get(path):
            response = handler(RequestFactory().get(path).environ, lambda *a, **k: None)
            b"".join(response)
            response.close()

        in_thread(get, "/write/pg_manual/")
    assert rows_by_name("pg_manual") == {}
    assert open_transactions("pg_manual") == 0


def test_leaked_atomic_block_is_rolled_back_logged_and_closed(caplog):
    admin = pg_admin()
    with caplog.at_level(logging.WARNING, logger="keepalive_mw"):
        status, pid = in_thread(wsgi_get, "/leak_atomic/default/")
    assert status == 200
    assert rows_by_name("default") == {}
    assert int(pid) not in {p for p, _ in pg_sessions(admin)}
    assert "atomic block still open on database alias 'default'" in caplog.text
    assert get_stats()["default"]["connections_closed_leaked_atomic"] == 1
    assert in_thread(wsgi_get, "/pid/default/")[1] != pid


def test_autocommit_left_off_is_committed_and_restored():
    status, pid = in_thread(wsgi_get, "/autocommit_off/default/")
    assert status == 200
    assert rows_by_name("default") == {"autocommit_off": 1}
    assert in_thread(wsgi_get, "/autocommit_state/default/") == (200, f"{pid} True")
    assert open_transactions("default") == 0


def test_transaction_opened_through_the_driver_is_ended(caplog):
    with caplog.at_level(logging.WARNING, logger="keepalive_mw"):
        status, pid = in_thread(wsgi_get, "/raw_begin/default/")
    assert status == 200
    assert rows_by_name("default") == {"raw_begin": 1}
    assert open_transactions("default") == 0
    assert "transaction left open on database alias 'default' committed" in caplog.text


def test_session_state_leaks_to_the_next_request_by_default():
    pid = in_thread(wsgi_get, "/dirty_session/default/")[1]
    assert in_thread(wsgi_get, "/session_state/default/")[1] == f"{pid} 4321ms 1 True"


@override_settings(KEEPALIVE_RESET_SESSION=True)
def test_reset_session_returns_the_session_to_its_defaults():
    pid = in_thread(wsgi_get, "/dirty_session/default/")[1]
    assert in_thread(wsgi_get, "/session_state/default/")[1] == f"{pid} 0 0 False"
    assert open_transactions("default") == 0


@override_settings(KEEPALIVE_RESET_SESSION=True)
def test_reset_session_with_autocommit_off_leaves_no_transaction():
    assert in_thread(wsgi_get, "/write/pg_manual/")[0] == 200
    assert rows_by_name("pg_manual") == {"write": 1}
    assert open_transactions("pg_manual") == 0


def test_wrapper_state_is_clean_for_the_next_request():
    in_thread(wsgi_get, "/failed_query/default/")
    (wrapper,) = connections_pool_idle("default")
    assert wrapper.errors_occurred is True  # kept for the check before reuse
    assert not wrapper.in_atomic_block and wrapper.savepoint_ids == []
    assert wrapper.needs_rollback is False and wrapper.run_on_commit == []
    assert wrapper.close_at is None and wrapper.health_check_enabled is False


def connections_pool_idle(alias):
    from keepalive_mw.pool import pool_for

    return list(pool_for(alias)._idle)


@pytest.mark.parametrize("view", ["stream_fail", "astream_fail"])
@pytest.mark.parametrize("alias", ["pg_manual", "mysql_manual"])
def test_failing_stream_under_asgi_rolls_back_although_close_never_comes(alias, view):
    # Django's ASGIHandler skips response.close() (so request_finished) when the body raises.
    for _ in range(3):
        with pytest.raises(RuntimeError, match="mid-stream"):
            asgi_get(f"/{view}/{alias}/")
    assert rows_by_name(alias) == {}
    assert open_transactions(alias) == 0
    assert get_stats()[alias]["connections_idle"] == 1
