"""Units of work beyond requests: each framework's hooks wired to the core's unit API.

One module per framework. Each is installed when its framework can be imported and stays
inert while its ``KEEPALIVE_<NAME>`` setting is False; none changes task or consumer code.
Frameworks that only call Django's ``close_old_connections()`` between units of work
(Dramatiq, Huey, Django-Q2) need no module: the core treats that call as the end of one.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

from .. import lifecycle


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


class KeyedUnits(threading.local):
    """Units opened by a framework's start signal, found again by the key its end repeats.

    Per thread: a framework sends both signals of a unit on the thread that runs it.
    """

    def __init__(self) -> None:
        # key (a task id) -> the unit begin_unit() opened, or None when the task ran inside
        # a request or another unit, which stays in charge.
        self.open: dict[Any, list[Any] | None] = {}

    def begin(self, key: Any) -> None:
        self.open[key] = lifecycle.begin_unit()

    def end(self, key: Any, failed: bool) -> None:
        lifecycle.end_unit(self.open.pop(key, None), failed)

    def end_all(self) -> None:
        """End units whose end signal never came (as failures)."""
        while self.open:
            _, unit = self.open.popitem()
            lifecycle.end_unit(unit, failed=True)
