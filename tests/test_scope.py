"""keepalive_mw.scope gives code outside requests the same reuse and hygiene."""

from __future__ import annotations

import pytest
from django.db import connections
from freezegun import freeze_time

import keepalive_mw
from keepalive_mw import get_stats
from tests.helpers import in_thread
from tests.test_hygiene import open_transactions, rows_by_name
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@keepalive_mw.scope()
def job(name, fail=False):
    Item.objects.using("pg_manual").create(name=name)
    if fail:
        raise RuntimeError("job failed")
    with connections["pg_manual"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def test_scope_commits_on_success_rolls_back_on_error_and_reuses():
    pids = {in_thread(job, "ok") for _ in range(3)}
    with pytest.raises(RuntimeError):
        in_thread(job, "bad", True)
    assert len(pids) == 1
    assert rows_by_name("pg_manual") == {"ok": 3}
    assert open_transactions("pg_manual") == 0
    assert get_stats()["pg_manual"]["connections_reused"] == 3


def test_connection_that_ages_during_use_is_closed_when_the_scope_ends():
    with freeze_time("2026-01-01") as frozen:
        def long_job():
            with keepalive_mw.scope():
                connections["default"].ensure_connection()
                frozen.tick(601)

        in_thread(long_job)
    assert get_stats()["default"]["connections_closed_age"] == 1
    assert get_stats()["default"]["connections_idle"] == 0


def test_outside_any_scope_a_thread_keeps_its_connection_as_django_does():
    def use():
        connections["default"].ensure_connection()
        return hasattr(connections._connections, "default")

    assert in_thread(use) is True
