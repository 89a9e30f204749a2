"""Exceptions raised by keepalive_mw."""

from __future__ import annotations

from django.db import OperationalError


class ConnectionWaitTimeout(OperationalError):
    """No connection became free within KEEPALIVE_WAIT_TIMEOUT at KEEPALIVE_MAX_CONNECTIONS."""

    def __init__(self, alias: str, bound: int, timeout: float) -> None:
        self.alias = alias
        self.bound = bound
        self.timeout = timeout
        super().__init__(
            f"keepalive_mw: no connection to database alias {alias!r} became free within "
            f"{timeout:g} s: all {bound} allowed by KEEPALIVE_MAX_CONNECTIONS are in use in "
            f"this process. Raise KEEPALIVE_MAX_CONNECTIONS or KEEPALIVE_WAIT_TIMEOUT, or "
            f"find what holds connections for long."
        )
