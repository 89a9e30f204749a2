"""Units of work beyond requests: each framework's hooks wired to the core's unit API.

One module per framework. Each is installed when its framework can be imported and stays
inert while its ``KEEPALIVE_<NAME>`` setting is False; none changes task or consumer code.
Frameworks that only call Django's ``close_old_connections()`` between units of work
(Dramatiq, Huey, Django-Q2) need no module: the core treats that call as the end of one.
"""

from __future__ import annotations

import importlib.util


def installed(module: str) -> bool:
    """Can ``module`` be imported (without importing it)?"""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install() -> None:
    """Wire every installed framework's hooks; idempotent."""
    from . import celery, channels, django_tasks

    for integration in (celery, channels, django_tasks):
        if integration.available():
            integration.install()
