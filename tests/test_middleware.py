"""KeepAliveMiddleware refuses to run without the app that does the work."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import override_settings

from keepalive_mw.middleware import KeepAliveMiddleware


def test_middleware_without_the_app_names_installed_apps():
    apps = [app for app in settings.INSTALLED_APPS if app != "keepalive_mw"]
    with override_settings(INSTALLED_APPS=apps):
        with pytest.raises(ImproperlyConfigured, match='add "keepalive_mw" to INSTALLED_APPS'):
            KeepAliveMiddleware(lambda request: HttpResponse())


def test_middleware_with_the_app_is_constructed():
    middleware = KeepAliveMiddleware(lambda request: HttpResponse())
    assert not middleware.async_mode
