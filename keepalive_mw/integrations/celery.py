"""Celery: each task, from ``task_prerun`` to ``task_postrun``, is a unit of work.

That span includes the result backend's write, which Celery makes before ``task_postrun``.
The unit commits when the task's state is SUCCESS and rolls back otherwise. Eager tasks run
inside their caller's unit and are left alone.

Celery's Django fixup closes every connection of the worker thread before and after each
task (``CELERY_DB_REUSE_MAX``: every N tasks). Kept connections are kept from it: the fixup
sees, as ``django.db.connections``, only the connections keepalive_mw does not keep. Its
other duties (closing caches, connections of aliases left to Django, native pools) stay.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .. import conf, lifecycle, units
from ..pool import kept_of
from . import installed

logger = logging.getLogger("keepalive_mw")

FIXUP_MODULE = "celery.fixups.django"
SUCCESS = "SUCCESS"  # celery.states.SUCCESS
# Receivers are connected once per process (ready() may run more than once).
_installed = False


def available() -> bool:
    """Is Celery in this process? Importing it costs ~70 ms: only wire it if it is here.

    A worker (``celery -A proj worker``) creates its app, hence imports Celery, before
    Django's set-up, as does a project that imports its Celery app in its package's
    ``__init__``; a process that never imports Celery pays nothing for it.
    """
    return "celery" in sys.modules


def installed_here() -> bool:
    """Is Celery installed (for the system checks, which run without a worker)?"""
    return installed("celery")


def install() -> None:
    global _installed
    if _installed:
        return
    from celery import signals

    uid = "keepalive_mw"
    signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid=uid)
    signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid=uid)
    signals.worker_process_shutdown.connect(on_worker_shutdown, weak=False, dispatch_uid=uid)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False, dispatch_uid=uid)
    # A worker creates its Celery app, hence imports the fixup, before Django's set-up;
    # any other process that runs tasks gets the fixup adjusted when its worker starts.
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=uid)
    if FIXUP_MODULE in sys.modules:
        adjust_fixup()
    _installed = True


def _eager(task: Any) -> bool:
    return bool(getattr(getattr(task, "request", None), "is_eager", False))


def on_task_prerun(sender: Any = None, task_id: Any = None, task: Any = None,
                   **kwargs: Any) -> None:
    if not conf.enabled(conf.CELERY) or _eager(task or sender):
        return
    # A worker thread runs one task at a time: a unit still open is one whose
    # task_postrun never came. End it before the next task.
    units.units_abandoned()
    units.unit_started(task_id)


def on_task_postrun(sender: Any = None, task_id: Any = None, task: Any = None,
                    state: Any = None, **kwargs: Any) -> None:
    units.unit_finished(task_id, failed=state != SUCCESS)


def on_worker_shutdown(**kwargs: Any) -> None:
    """A worker (prefork child, or the worker itself) exits: close what it kept."""
    if not conf.enabled(conf.CELERY):
        return
    units.release_thread()
    lifecycle.close_idle()


def on_worker_init(**kwargs: Any) -> None:
    """A worker starts (before it forks its pool): the fixup would close connections here.

    Close what start-up code kept, as the fixup does for plain Django, so that a prefork
    parent holds no session for its whole life.
    """
    adjust_fixup()
    if conf.enabled(conf.CELERY):
        units.release_thread()
        lifecycle.close_idle()


# -- the fixup ------------------------------------------------------------------------------


class _UnkeptConnections:
    """``django.db.connections`` as the fixup sees it: without kept connections."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler

    def all(self, initialized_only: bool = False) -> list[Any]:
        wrappers = self._handler.all(initialized_only=initialized_only)
        if not conf.enabled(conf.CELERY):
            return wrappers
        return [wrapper for wrapper in wrappers if kept_of(wrapper) is None]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


class _FixupDatabase:
    """``django.db`` as the fixup sees it."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.connections = _UnkeptConnections(module.connections)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def fixup_adjustable() -> bool:
    """Does Celery's worker fixup read connections where keepalive_mw can adjust it?"""
    fixup = sys.modules.get(FIXUP_MODULE)
    if fixup is None:
        import importlib

        try:
            fixup = importlib.import_module(FIXUP_MODULE)
        except ImportError:
            return False
    worker_fixup = getattr(fixup, "DjangoWorkerFixup", None)
    return worker_fixup is not None and callable(getattr(worker_fixup, "_close_database", None))


def adjust_fixup() -> None:
    """Make every DjangoWorkerFixup, existing or future, see only unkept connections.

    The fixup keeps ``django.db`` in its ``_db`` attribute; a property on the class takes
    precedence over the instance's own value, so an instance made before this runs is
    covered too.
    """
    fixup = sys.modules.get(FIXUP_MODULE)
    worker_fixup = getattr(fixup, "DjangoWorkerFixup", None)
    if worker_fixup is None or isinstance(worker_fixup.__dict__.get("_db"), property):
        return
    from django import db

    seen = _FixupDatabase(db)
    worker_fixup._db = property(lambda self: seen, lambda self, value: None)
