"""Celery tasks of the example project (``example.celery_app``): plain Celery and Django
code, nothing of keepalive_mw's."""

from __future__ import annotations

import os

from celery import shared_task

from example.shop import work


@shared_task
def ping() -> int:
    """No database: the worker answers (used to wait until it is ready)."""
    return os.getpid()


@shared_task
def queries() -> tuple[int, object]:
    """Three small queries; return (worker process pid, database session id)."""
    return work.three_queries()


@shared_task
def insert(label: str) -> tuple[int, object]:
    """Insert a row labelled ``label``."""
    return work.insert(label)


@shared_task
def insert_then_fail(label: str) -> None:
    """Insert a row labelled ``label``, then raise: the task fails."""
    work.insert_then_fail(label)
