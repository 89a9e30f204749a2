"""Celery app of the example project: ``celery -A example.celery_app worker``.

Configured from Django's settings (``CELERY_*``, see example/settings.py): broker
EXAMPLE_BROKER_URL, result backend EXAMPLE_RESULT_BACKEND (none by default). Tasks are in
example/shop/tasks.py. DJANGO_SETTINGS_MODULE being set, Celery installs its Django fixup,
which closes every database connection before and after each task (every
CELERY_DB_REUSE_MAX tasks with EXAMPLE_CELERY_DB_REUSE_MAX).

For fork-safety checks, one query outside any task, its connection left open
(EXAMPLE_IMPORT_PID_FILE receives its session id):

EXAMPLE_QUERY_AT_IMPORT=1       at import of this module, in the worker's main process
                                (closed at worker_init, before the pool forks: by the fixup
                                in plain Django, by keepalive_mw when installed)
EXAMPLE_QUERY_BEFORE_FORK=1     at celeryd_after_setup, after worker_init: the connection is
                                open when the prefork pool forks its children
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")

app = Celery("example")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

if os.environ.get("EXAMPLE_QUERY_AT_IMPORT") == "1":
    import django

    django.setup()
    from example.startup_query import run_startup_query

    run_startup_query()


@signals.celeryd_after_setup.connect
def _query_before_fork(**kwargs: Any) -> None:
    # Sent in the main process after worker_init and before the pool starts.
    if os.environ.get("EXAMPLE_QUERY_BEFORE_FORK") == "1":
        from example.startup_query import run_startup_query

        run_startup_query()
