"""Channels: each ``database_sync_to_async`` call is a unit of work.

Channels runs the function on a long-lived thread, between two ``close_old_connections()``
calls. The call's unit commits when the function returns and rolls back when it raises;
inside a request (an async view calling it) the request stays in charge.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import conf, units
from . import installed


def available() -> bool:
    return installed("channels")


def install() -> None:
    from channels.db import DatabaseSyncToAsync

    original = DatabaseSyncToAsync.thread_handler
    if getattr(original, "keepalive_mw", False):
        return

    @functools.wraps(original)
    def thread_handler(self: Any, loop: Any, *args: Any, **kwargs: Any) -> Any:
        if not conf.enabled(conf.CHANNELS):
            return original(self, loop, *args, **kwargs)
        unit = units.begin_unit()
        try:
            result = original(self, loop, *args, **kwargs)
        except BaseException:
            units.end_unit(unit, failed=True)
            raise
        units.end_unit(unit, failed=False)
        return result

    thread_handler.keepalive_mw = True  # type: ignore[attr-defined]
    DatabaseSyncToAsync.thread_handler = thread_handler  # type: ignore[method-assign]


def wrappable() -> bool:
    """Does Channels still run its database calls through a thread_handler?"""
    try:
        from channels.db import DatabaseSyncToAsync
    except ImportError:
        return False
    return callable(getattr(DatabaseSyncToAsync, "thread_handler", None))
