"""Connections are closed by age and idleness, on an injected (frozen) clock."""

from __future__ import annotations

import pytest
from django.test import override_settings
from freezegun import freeze_time

from keepalive_mw import conf, get_stats, housekeeper
from keepalive_mw.pool import KeptConnection
from tests.helpers import in_thread, pg_admin, pg_sessions_gone, wsgi_get

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def pid():
    return in_thread(wsgi_get, "/pid/default/")[1]


@override_settings(KEEPALIVE_MAX_AGE=100, KEEPALIVE_PING_AFTER=None, KEEPALIVE_IDLE_TIMEOUT=None)
def test_connection_is_closed_after_its_max_age_and_not_before():
    admin = pg_admin()
    with freeze_time("2026-01-01") as frozen:
        first = pid()
        frozen.tick(100 * (1 - conf.MAX_AGE_JITTER) - 1)
        assert pid() == first  # younger than any cut of the max age
        frozen.tick(2 + 100 * conf.MAX_AGE_JITTER)
        assert pid() != first  # older than any: closed, not handed out
        assert pg_sessions_gone(admin, {int(first)})
    assert get_stats()["default"]["connections_closed_age"] == 1


@override_settings(KEEPALIVE_MAX_AGE=0)
def test_max_age_zero_closes_after_every_request():
    admin = pg_admin()
    pids = {pid() for _ in range(3)}
    assert len(pids) == 3
    assert pg_sessions_gone(admin, {int(p) for p in pids})


@override_settings(KEEPALIVE_MAX_AGE=None, KEEPALIVE_PING_AFTER=None, KEEPALIVE_IDLE_TIMEOUT=None)
def test_max_age_none_keeps_a_connection_forever():
    with freeze_time("2026-01-01") as frozen:
        first = pid()
        frozen.tick(10 * 365 * 86400)
        assert pid() == first


def test_each_connection_gets_a_cut_of_at_most_the_jitter():
    factors = set()
    for _ in range(200):
        kept = KeptConnection()
        kept.opened(None)
        factors.add(kept.lifetime_factor)
    assert len(factors) > 100
    assert all(1 - conf.MAX_AGE_JITTER <= f <= 1 for f in factors)


@override_settings(KEEPALIVE_IDLE_TIMEOUT=60, KEEPALIVE_MAX_AGE=600)
def test_housekeeper_closes_idle_connections_without_a_request():
    admin = pg_admin()
    with freeze_time("2026-01-01") as frozen:
        first = int(pid())
        frozen.tick(59)
        assert housekeeper.run_once() == 0
        frozen.tick(2)
        assert housekeeper.run_once() == 1
    assert pg_sessions_gone(admin, {first})
    assert get_stats()["default"]["connections_closed_idle"] == 1


@override_settings(KEEPALIVE_IDLE_TIMEOUT=None, KEEPALIVE_MAX_AGE=120)
def test_housekeeper_closes_idle_connections_past_their_age():
    with freeze_time("2026-01-01") as frozen:
        pid()
        frozen.tick(121)
        assert housekeeper.run_once() == 1
    assert get_stats()["default"]["connections_closed_age"] == 1


@override_settings(KEEPALIVE_IDLE_TIMEOUT=10, KEEPALIVE_MAX_AGE=None)
def test_housekeeper_interval_follows_the_shortest_timeout():
    pid()
    assert housekeeper.interval() == 5
    assert housekeeper.running


def test_override_settings_takes_effect_on_kept_connections():
    with freeze_time("2026-01-01") as frozen:
        first = pid()
        frozen.tick(50)
        with override_settings(KEEPALIVE_MAX_AGE=10):
            assert pid() != first
