"""App config: rewires Django's request signals to keepalive_mw's connection handling."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import signals
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections
from django.db.backends.signals import connection_created


class KeepAliveConfig(AppConfig):
    name = "keepalive_mw"
    verbose_name = "keepalive_mw"

    def ready(self) -> None:
        from . import checks, forking, integrations

        checks.register()
        install()
        forking.install()
        integrations.install()


# Idempotence: ready() may run more than once (some test set-ups call django.setup() again).
_installed = False


def install() -> None:
    """Take over the request signals and the creation of connections."""
    from . import lifecycle, units

    global _installed
    if _installed:
        return
    # Django's receiver closes connections at request start and end. It is removed;
    # should something connect it again (Django's test client does after each request),
    # it finds nothing to do on kept connections: they are given back before it runs,
    # and carry no close_at of Django's.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    signals.request_started.connect(units.on_request_started, dispatch_uid="keepalive_mw")
    signals.request_finished.connect(units.on_request_finished, dispatch_uid="keepalive_mw")
    connection_created.connect(lifecycle.on_connection_created, dispatch_uid="keepalive_mw")
    lifecycle._django_create_connection = connections.create_connection
    connections.create_connection = lifecycle.create_connection
    try:
        lifecycle.adopt_existing()
    except ImproperlyConfigured:
        # An invalid KEEPALIVE_* setting must not stop start-up: `manage.py check` reports
        # it (keepalive_mw.E0xx) and every request fails on it until it is fixed.
        pass
    _installed = True
