"""Settings are read in one place, per alias, and follow override_settings."""

from __future__ import annotations

import copy

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from keepalive_mw import conf


def test_defaults():
    config = conf.config_for("mysql")
    assert config.as_dict() == {
        "MAX_AGE": 600, "HEALTH_CHECKS": True, "PING_AFTER": 30.0, "PING_TIMEOUT": 5.0,
        "IDLE_TIMEOUT": 300.0, "END_OF_REQUEST": "commit_on_success",
        "RESET_SESSION": False, "MAX_CONNECTIONS": None, "WAIT_TIMEOUT": 30.0,
        "CONNECT_RETRY": 10.0, "LEAK_THRESHOLD": None, "POOLER": None, "PGBOUNCER_ADMIN": None,
        "RELEASE": "request",
    }


def test_override_settings_is_seen_at_once():
    assert conf.config_for("default").max_age == 600
    with override_settings(KEEPALIVE_MAX_AGE=5):
        assert conf.config_for("default").max_age == 5
    assert conf.config_for("default").max_age == 600


def test_per_alias_overrides_and_opt_out():
    databases = copy.deepcopy(settings.DATABASES)
    databases["mysql"]["KEEPALIVE"] = {"MAX_AGE": 30, "RESET_SESSION": False}
    databases["sqlite"]["KEEPALIVE"] = False
    with override_settings(DATABASES=databases, KEEPALIVE_MAX_AGE=100):
        assert conf.config_for("mysql").max_age == 30
        assert conf.config_for("default").max_age == 100
        assert conf.config_for("sqlite") is None
        assert "sqlite" in conf.unmanaged_aliases()


def test_invalid_value_at_runtime_is_improperly_configured():
    with override_settings(KEEPALIVE_MAX_AGE="ten"):
        with pytest.raises(ImproperlyConfigured, match="KEEPALIVE_MAX_AGE"):
            conf.config_for("default")


@pytest.mark.parametrize("overrides, named", [
    ({"MAX_AGE": "600"}, 'DATABASES["default"]["KEEPALIVE"]["MAX_AGE"] must be'),
    ({"HEALTH_CHECKS": "yes"}, 'DATABASES["default"]["KEEPALIVE"]["HEALTH_CHECKS"] must be'),
])
def test_per_alias_error_names_the_setting_as_the_user_wrote_it(overrides, named):
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"]["KEEPALIVE"] = overrides
    with override_settings(DATABASES=databases):
        with pytest.raises(ImproperlyConfigured) as raised:
            conf.config_for("default")
    assert str(raised.value).startswith(named)
    assert "KEEPALIVE_" not in str(raised.value)


def test_global_error_names_the_global_setting():
    with override_settings(KEEPALIVE_HEALTH_CHECKS="yes"):
        with pytest.raises(ImproperlyConfigured) as raised:
            conf.config_for("default")
    assert str(raised.value).startswith("KEEPALIVE_HEALTH_CHECKS must be True or False")


def test_pooler_and_pgbouncer_admin_per_alias():
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"]["KEEPALIVE"] = {
        "POOLER": "transaction", "PGBOUNCER_ADMIN": "port=6432 user=stats password=s3cret"}
    with override_settings(DATABASES=databases):
        config = conf.config_for("default")
        assert config.pooler == "transaction"
        assert config.pgbouncer_admin == "port=6432 user=stats password=s3cret"
        # Reports never show the password.
        assert config.as_dict()["PGBOUNCER_ADMIN"] == {
            "port": "6432", "user": "stats", "password": "********"}
        assert conf.config_for("mysql").pooler is None


@pytest.mark.parametrize("value, problem", [
    ("statement", "must be None, 'transaction' or 'session'"),
    ("Transaction", "must be None, 'transaction' or 'session'"),
    (True, "must be None, 'transaction' or 'session'"),
])
def test_invalid_pooler(value, problem):
    with override_settings(KEEPALIVE_POOLER=value):
        with pytest.raises(ImproperlyConfigured, match=f"^KEEPALIVE_POOLER {problem}"):
            conf.config_for("default")


@pytest.mark.parametrize("value, problem", [
    ("dbname=test user=stats", "must connect to PgBouncer's admin console, the database "
                               "'pgbouncer', not 'test'"),
    ({"dbname": "test"}, "must connect to PgBouncer's admin console"),
    ("host='unbalanced", "is not a valid libpq connection string"),
    ({"port": True}, "must map libpq keywords to strings or numbers"),
    (6432, "must be None, a libpq connection string or a dict"),
])
def test_invalid_pgbouncer_admin(value, problem):
    with override_settings(KEEPALIVE_PGBOUNCER_ADMIN=value):
        with pytest.raises(ImproperlyConfigured) as raised:
            conf.config_for("default")
    assert str(raised.value).startswith(f"KEEPALIVE_PGBOUNCER_ADMIN {problem}")


@pytest.mark.parametrize("value", [
    None, "", "user=stats", "postgresql://stats@127.0.0.1:6432/pgbouncer",
    {"user": "stats", "port": 6432}, {"dbname": "pgbouncer"},
])
def test_valid_pgbouncer_admin(value):
    with override_settings(KEEPALIVE_PGBOUNCER_ADMIN=value):
        assert conf.config_for("default").pgbouncer_admin == value
