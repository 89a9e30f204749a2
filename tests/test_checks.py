"""Invalid configuration fails ``manage.py check``, with a stable id and a hint."""

from __future__ import annotations

import copy
import re

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from keepalive_mw import checks, conf


def ids(messages):
    return [message.id for message in messages]


def run_all():
    return (checks.check_settings() + checks.check_databases() + checks.check_middleware()
            + checks.check_integrations())


def test_default_test_settings_pass():
    assert run_all() == []


@pytest.mark.parametrize("name, value, check_id", [
    ("KEEPALIVE_MAX_AGE", -1, "keepalive_mw.E001"),
    ("KEEPALIVE_MAX_AGE", "600", "keepalive_mw.E001"),
    ("KEEPALIVE_MAX_AGE", True, "keepalive_mw.E001"),
    ("KEEPALIVE_MAX_AGE", float("nan"), "keepalive_mw.E001"),
    ("KEEPALIVE_HEALTH_CHECKS", "yes", "keepalive_mw.E002"),
    ("KEEPALIVE_PING_AFTER", -5, "keepalive_mw.E003"),
    ("KEEPALIVE_PING_TIMEOUT", 0, "keepalive_mw.E004"),
    ("KEEPALIVE_PING_TIMEOUT", None, "keepalive_mw.E004"),
    ("KEEPALIVE_IDLE_TIMEOUT", 0, "keepalive_mw.E005"),
    ("KEEPALIVE_END_OF_REQUEST", "commit", "keepalive_mw.E006"),
    ("KEEPALIVE_RESET_SESSION", 1, "keepalive_mw.E007"),
    ("KEEPALIVE_MAX_CONNECTIONS", 0, "keepalive_mw.E008"),
    ("KEEPALIVE_MAX_CONNECTIONS", 2.5, "keepalive_mw.E008"),
    ("KEEPALIVE_WAIT_TIMEOUT", -1, "keepalive_mw.E009"),
    ("KEEPALIVE_PROMETHEUS", "yes", "keepalive_mw.E012"),
    ("KEEPALIVE_CONNECT_RETRY", -1, "keepalive_mw.E017"),
    ("KEEPALIVE_CONNECT_RETRY", None, "keepalive_mw.E017"),
    ("KEEPALIVE_LEAK_THRESHOLD", 0, "keepalive_mw.E013"),
    ("KEEPALIVE_LEAK_THRESHOLD", "5m", "keepalive_mw.E013"),
    ("KEEPALIVE_CELERY", "yes", "keepalive_mw.E014"),
    ("KEEPALIVE_CHANNELS", 1, "keepalive_mw.E015"),
    ("KEEPALIVE_DJANGO_TASKS", None, "keepalive_mw.E016"),
    ("KEEPALIVE_POOLER", "statement", "keepalive_mw.E018"),
    ("KEEPALIVE_PGBOUNCER_ADMIN", "dbname=test", "keepalive_mw.E019"),
    ("KEEPALIVE_PGBOUNCER_ADMIN", ["user=stats"], "keepalive_mw.E019"),
])
def test_each_invalid_setting_has_its_error(name, value, check_id):
    with override_settings(**{name: value}):
        messages = checks.check_settings()
    assert ids(messages) == [check_id]
    assert name in messages[0].msg and messages[0].hint


@pytest.mark.parametrize("name, value", [
    ("KEEPALIVE_MAX_AGE", None), ("KEEPALIVE_MAX_AGE", 0), ("KEEPALIVE_MAX_AGE", 1.5),
    ("KEEPALIVE_PING_AFTER", None), ("KEEPALIVE_PING_AFTER", 0),
    ("KEEPALIVE_IDLE_TIMEOUT", None), ("KEEPALIVE_END_OF_REQUEST", "rollback"),
    ("KEEPALIVE_MAX_CONNECTIONS", 1), ("KEEPALIVE_WAIT_TIMEOUT", 0),
    ("KEEPALIVE_CONNECT_RETRY", 0), ("KEEPALIVE_CONNECT_RETRY", 2.5),
    ("KEEPALIVE_LEAK_THRESHOLD", None), ("KEEPALIVE_LEAK_THRESHOLD", 0.5),
    ("KEEPALIVE_CELERY", False), ("KEEPALIVE_CHANNELS", False),
    ("KEEPALIVE_DJANGO_TASKS", False), ("KEEPALIVE_POOLER", None),
])
def test_valid_values_pass(name, value):
    with override_settings(**{name: value}):
        assert checks.check_settings() == []


def test_unknown_keepalive_setting_is_a_warning():
    with override_settings(KEEPALIVE_MAXAGE=5):
        assert ids(checks.check_settings()) == ["keepalive_mw.W003"]


def with_database(alias, **entries):
    databases = copy.deepcopy(settings.DATABASES)
    databases[alias].update(entries)
    return override_settings(DATABASES=databases)


@pytest.mark.parametrize("entries, check_id", [
    ({"KEEPALIVE": "off"}, "keepalive_mw.E010"),
    ({"KEEPALIVE": {"MAXAGE": 5}}, "keepalive_mw.E011"),
    ({"KEEPALIVE": {"MAX_AGE": -5}}, "keepalive_mw.E001"),
    ({"OPTIONS": {"pool": True}}, "keepalive_mw.W004"),
    ({"CONN_MAX_AGE": 60}, "keepalive_mw.W005"),
    ({"CONN_MAX_AGE": None}, "keepalive_mw.W005"),
    ({"CONN_HEALTH_CHECKS": True}, "keepalive_mw.W006"),
])
def test_database_entries_are_checked(entries, check_id):
    with with_database("default", **entries):
        messages = checks.check_databases()
    assert ids(messages) == [check_id]
    assert re.search(r"""["']default["']""", messages[0].msg)


def test_per_alias_error_names_the_setting_as_written():
    with with_database("default", KEEPALIVE={"MAX_AGE": "600"}):
        (message,) = checks.check_databases()
    assert message.id == "keepalive_mw.E001"
    assert message.msg.startswith('DATABASES["default"]["KEEPALIVE"]["MAX_AGE"] must be')


def test_opted_out_alias_may_use_conn_max_age_or_the_native_pool():
    with with_database("default", KEEPALIVE=False, CONN_MAX_AGE=60, OPTIONS={"pool": True}):
        assert checks.check_databases() == []


def test_reset_session_on_mysql_warns_it_is_partial():
    with override_settings(KEEPALIVE_RESET_SESSION=True):
        assert set(ids(checks.check_databases())) == {"keepalive_mw.W007"}


def test_middleware_missing_or_not_first_is_a_warning():
    with override_settings(MIDDLEWARE=[]):
        assert ids(checks.check_middleware()) == ["keepalive_mw.W001"]
    with override_settings(MIDDLEWARE=["django.middleware.common.CommonMiddleware",
                                       conf.MIDDLEWARE_PATH]):
        assert ids(checks.check_middleware()) == ["keepalive_mw.W002"]


def test_checks_are_registered_and_fail_manage_py_check():
    # Only keepalive_mw's checks: Django 6.1's MySQL model checks query the server, which
    # this test (no database access) may not do.
    with override_settings(KEEPALIVE_END_OF_REQUEST="sometimes"):
        with pytest.raises(SystemCheckError, match="keepalive_mw.E006"):
            call_command("check", tags=["keepalive_mw"])


def test_prometheus_without_prometheus_client_is_a_warning(monkeypatch):
    monkeypatch.setattr(checks, "_importable", lambda module: False)
    with override_settings(KEEPALIVE_PROMETHEUS=True):
        assert ids(checks.check_settings()) == ["keepalive_mw.W008"]


def test_celery_db_reuse_max_is_reported_as_moot():
    with override_settings(CELERY_DB_REUSE_MAX=10):
        assert ids(checks.check_integrations()) == ["keepalive_mw.W010"]
    with override_settings(CELERY_DB_REUSE_MAX=10, KEEPALIVE_CELERY=False):
        assert checks.check_integrations() == []


def test_an_unfamiliar_celery_fixup_is_reported(monkeypatch):
    from celery.fixups.django import DjangoWorkerFixup

    monkeypatch.delattr(DjangoWorkerFixup, "_close_database")
    assert ids(checks.check_integrations()) == ["keepalive_mw.W009"]


def test_an_unfamiliar_channels_is_reported(monkeypatch):
    from channels.db import DatabaseSyncToAsync

    monkeypatch.setattr(DatabaseSyncToAsync, "thread_handler", None)
    assert ids(checks.check_integrations()) == ["keepalive_mw.W011"]
    with override_settings(KEEPALIVE_CHANNELS=False):
        assert checks.check_integrations() == []


def test_task_results_on_a_manual_commit_alias_are_reported(monkeypatch):
    from keepalive_mw.integrations import django_tasks

    monkeypatch.setattr(django_tasks, "manual_commit_result_aliases", lambda: ["pg_manual"])
    messages = checks.check_integrations()
    assert ids(messages) == ["keepalive_mw.W012"] and "'pg_manual'" in messages[0].msg


def pooled(alias="default", no_cursors=False, **keepalive):
    """The alias with KEEPALIVE overrides (a pooler...) and, with ``no_cursors``,
    DISABLE_SERVER_SIDE_CURSORS = True."""
    extra = {"DISABLE_SERVER_SIDE_CURSORS": True} if no_cursors else {}
    return with_database(alias, KEEPALIVE=keepalive, **extra)


def test_transaction_mode_needs_server_side_cursors_disabled():
    with pooled(POOLER="transaction"):
        messages = checks.check_databases()
    assert ids(messages) == ["keepalive_mw.E021"]
    assert "DISABLE_SERVER_SIDE_CURSORS" in messages[0].msg
    assert "WITH HOLD" in messages[0].hint
    with pooled(POOLER="transaction", no_cursors=True):
        assert checks.check_databases() == []


def test_transaction_mode_and_reset_session_is_an_error():
    with pooled(POOLER="transaction", RESET_SESSION=True, no_cursors=True):
        messages = checks.check_databases()
    assert ids(messages) == ["keepalive_mw.E022"]
    assert "whichever server session" in messages[0].msg
    assert 'DATABASES["default"]["KEEPALIVE"]["RESET_SESSION"] = False' in messages[0].hint


def test_session_mode_warns_with_sizing_advice():
    with pooled(POOLER="session", RESET_SESSION=True):
        (message,) = checks.check_databases()
    assert message.id == "keepalive_mw.W013"
    assert "default_pool_size" in message.hint and "MAX_CONNECTIONS is unset" in message.hint
    with pooled(POOLER="session", MAX_CONNECTIONS=4):
        (message,) = checks.check_databases()
    assert "x MAX_CONNECTIONS (4) x hosts" in message.hint


def test_pooler_on_another_backend_is_an_error():
    with pooled("mysql", POOLER="session"):
        messages = checks.check_databases()
    assert ids(messages) == ["keepalive_mw.E020"]
    assert "'mysql'" in messages[0].msg
    with override_settings(KEEPALIVE_POOLER="transaction"):  # every alias, then
        found = ids(checks.check_databases())
    assert found.count("keepalive_mw.E020") == 3  # mysql, mysql_manual, sqlite
    assert found.count("keepalive_mw.E021") == 3  # default, pg_manual, pg_proxy


def test_pgbouncer_admin_without_pooler_warns():
    with pooled(PGBOUNCER_ADMIN="user=stats"):
        assert ids(checks.check_databases()) == ["keepalive_mw.W014"]
    with pooled(PGBOUNCER_ADMIN="user=stats", POOLER="transaction", no_cursors=True):
        assert checks.check_databases() == []


def test_invalid_pooler_per_alias_names_the_setting_as_written():
    with pooled(POOLER="statement"):
        (message,) = checks.check_databases()
    assert message.id == "keepalive_mw.E018"
    assert message.msg.startswith('DATABASES["default"]["KEEPALIVE"]["POOLER"] must be None')
