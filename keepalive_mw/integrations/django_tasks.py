"""Django's tasks framework: each task, ``task_started`` to ``task_finished``, is a unit.

Django 6.0+ sends the signals from ``django.tasks.signals``; on Django 5.2 the
``django-tasks`` backport sends its own, and a worker (``django-tasks-db``'s ``db_worker``)
uses whichever its Django has. Both are wired when present. The unit commits when the task
succeeded and rolls back otherwise; a task run inline by a request (the immediate backend)
is part of that request.
"""

from __future__ import annotations

from typing import Any

from .. import conf, units
from . import installed

SIGNAL_MODULES = ("django.tasks.signals", "django_tasks.signals")
SUCCESSFUL = "SUCCESSFUL"  # TaskResultStatus.SUCCESSFUL, a str enum in both


def _present() -> list[str]:
    return [name for name in SIGNAL_MODULES if installed(name.rsplit(".", 1)[0])]


def available() -> bool:
    return bool(_present())


def install() -> None:
    import importlib

    for name in _present():
        signals = importlib.import_module(name)
        signals.task_started.connect(on_task_started, dispatch_uid="keepalive_mw")
        signals.task_finished.connect(on_task_finished, dispatch_uid="keepalive_mw")


def _key(task_result: Any) -> Any:
    return getattr(task_result, "id", None)


def on_task_started(sender: Any = None, task_result: Any = None, **kwargs: Any) -> None:
    if conf.enabled(conf.DJANGO_TASKS):
        units.unit_started(_key(task_result))


def on_task_finished(sender: Any = None, task_result: Any = None, **kwargs: Any) -> None:
    status = getattr(task_result, "status", None)
    units.unit_finished(_key(task_result), failed=status != SUCCESSFUL)


def manual_commit_result_aliases() -> list[str]:
    """Aliases with AUTOCOMMIT False where a database task backend stores its results."""
    from django.apps import apps
    from django.db import connections, router

    if not apps.is_installed("django_tasks_db"):
        return []
    try:
        model = apps.get_model("django_tasks_database", "DBTaskResult")
    except LookupError:
        return []
    alias = router.db_for_write(model)
    return [] if connections.settings[alias].get("AUTOCOMMIT", True) else [alias]
