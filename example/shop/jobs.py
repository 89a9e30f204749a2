"""Tasks of Django's tasks framework (``django.tasks`` on Django 6, else the ``django_tasks``
backport), run by ``django_tasks_db``'s ``db_worker`` when EXAMPLE_TASKS=1. Plain Django
code, nothing of keepalive_mw's."""

from __future__ import annotations

try:
    from django.tasks import task
except ImportError:  # Django < 6: the backport
    from django_tasks import task

from example.shop import work


@task
def queries() -> list:
    """Three small queries; return [worker process pid, database session id]."""
    return list(work.three_queries())


@task
def insert(label: str) -> list:
    """Insert a row labelled ``label``."""
    return list(work.insert(label))


@task
def insert_then_fail(label: str) -> None:
    """Insert a row labelled ``label``, then raise: the task fails."""
    work.insert_then_fail(label)
