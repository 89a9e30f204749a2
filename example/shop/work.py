"""Units of work shared by the example's views, Celery tasks, Django tasks and Channels
consumers: plain ORM code that never commits (with EXAMPLE_AUTOCOMMIT=0, whatever ends the
unit of work decides whether its writes persist)."""

from __future__ import annotations

import os

from example.shop.models import Row
from example.views import backend_pid


class ExampleFailure(RuntimeError):
    """Raised on purpose after a write: the write must not persist."""


def three_queries() -> tuple[int, object]:
    """Three small queries, like the ``/`` view; return (OS pid, database session id)."""
    Row.objects.count()
    Row.objects.order_by("-id").values_list("id", flat=True).first()
    return os.getpid(), backend_pid()


def insert(label: str) -> tuple[int, object]:
    """Insert a row; return (OS pid, database session id)."""
    Row.objects.create(label=label)
    return os.getpid(), backend_pid()


def insert_then_fail(label: str) -> None:
    """Insert a row, then raise :class:`ExampleFailure`."""
    Row.objects.create(label=label)
    raise ExampleFailure(f"example failure after inserting a {label!r} row: it must not persist")
