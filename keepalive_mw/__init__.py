"""keepalive_mw: keep Django database connections alive across requests, and clean."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0.dev0"
__all__ = ["ConnectionWaitTimeout", "close_idle", "get_stats", "hold_session", "scope",
           "unit_finished", "unit_started"]


def __getattr__(name: str) -> Any:
    # Lazy: importing keepalive_mw (settings, INSTALLED_APPS) must not import django.db.
    if name in ("scope", "unit_started", "unit_finished"):
        from . import units

        return getattr(units, name)
    if name == "hold_session":
        from .borrow import hold_session

        return hold_session
    if name == "close_idle":
        from .lifecycle import close_idle

        return close_idle
    if name == "get_stats":
        from .stats import get_stats

        return get_stats
    if name == "ConnectionWaitTimeout":
        from .exceptions import ConnectionWaitTimeout

        return ConnectionWaitTimeout
    raise AttributeError(f"module 'keepalive_mw' has no attribute {name!r}")
