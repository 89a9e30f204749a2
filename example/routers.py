"""Database router of the example project (EXAMPLE_TASKS_DB_ALIAS=1): the task queue's
tables of ``django_tasks_db`` are read and written through the ``tasks`` alias, the same
database with autocommit on, so that claiming a task and recording its result commit
whatever the ``default`` alias's AUTOCOMMIT, and a failed task's status is kept while its
application writes are rolled back."""

from __future__ import annotations

from typing import Any

TASK_QUEUE_APP = "django_tasks_database"  # django_tasks_db's app label
TASK_QUEUE_ALIAS = "tasks"


class TasksRouter:
    """Send ``django_tasks_db`` models to the ``tasks`` alias; no say on anything else."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return TASK_QUEUE_ALIAS if model._meta.app_label == TASK_QUEUE_APP else None

    db_for_write = db_for_read
