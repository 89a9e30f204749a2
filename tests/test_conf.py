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
        "RESET_SESSION": False, "MAX_CONNECTIONS": None, "WAIT_TIMEOUT": 30.0, "CONNECT_RETRY": 10.0,
        "LEAK_THRESHOLD": None, "RELEASE": "request",
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
