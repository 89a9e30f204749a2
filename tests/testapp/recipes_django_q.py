"""Django-Q2: each task, ``pre_execute`` to ``post_execute_in_worker``, is a unit."""

from django_q.signals import post_execute_in_worker, pre_execute

import keepalive_mw


def task_started(sender, task, **kwargs):
    # A sync task runs in its caller: the caller's unit decides.
    if not task.get("sync"):
        keepalive_mw.unit_started(task["id"])


def task_finished(sender, task, **kwargs):
    # A sync task that raised has no "success" key yet.
    keepalive_mw.unit_finished(task["id"], failed=not task.get("success"))


def connect():
    """Call from an AppConfig.ready(): each worker process then has the receivers."""
    pre_execute.connect(task_started, dispatch_uid="keepalive_mw")
    post_execute_in_worker.connect(task_finished, dispatch_uid="keepalive_mw")
