"""Units of work: which thread holds which kept connections, and when their use ends.

A unit is a request, a ``scope()``, or what an integration opens (a Celery task, a Channels
``database_sync_to_async`` call, a task of Django's tasks framework, a job a recipe wires
with ``unit_started``/``unit_finished``). What a thread takes inside a unit is given back
when the unit ends: committed if it succeeded, rolled back if it failed. Outside any unit a
thread keeps what it takes, as in plain Django, until a unit adopts it or Django's own
``close_old_connections()`` marks the end of the thread's unit of work.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from contextlib import ContextDecorator
from typing import TYPE_CHECKING, Any

from django.db import connections

from . import conf, housekeeper, lifecycle
from .pool import kept_of, pool_for

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

# How the request ended, as the middleware saw it; None when it did not see it.
SUCCEEDED = "succeeded"
FAILED = "failed"


class _ThreadRecord(threading.local):
    """What this thread (greenlet) has taken, in which units, and how its request went.

    A plain thread-local, not Django's asgiref Local: request_started, request_finished and
    the middleware's report all run on the request's own thread (under ASGI, its
    thread-sensitive executor thread), and a thread-local costs a fraction of a Local.
    """

    def __init__(self) -> None:
        # Open units of work (requests, scopes, integrations' units), innermost last, each
        # the list of wrappers it took or adopted.
        self.scopes: list[list[BaseDatabaseWrapper]] = []
        # Wrappers taken outside any unit (startup code, commands, worker loops, tests): the
        # next unit on this thread adopts them, so that they are given back at its end.
        self.unscoped: list[BaseDatabaseWrapper] = []
        # The scope of the request in progress on this thread, or None.
        self.request: list[BaseDatabaseWrapper] | None = None
        # SUCCEEDED or FAILED as the middleware saw the request; None if it did not.
        self.outcome: str | None = None


thread_record = _ThreadRecord()


# -- taking ------------------------------------------------------------------------------


def track(wrapper: BaseDatabaseWrapper) -> None:
    """Record a wrapper this thread just took: in its innermost unit, or held outside."""
    scopes = thread_record.scopes
    if scopes:
        scopes[-1].append(wrapper)
    elif not _in_event_loop():
        # Outside any unit the wrapper stays with its thread, as in plain Django (a
        # management command, startup code, a worker's loop), until a unit adopts it or
        # close_old_connections() ends the thread's use of it.
        thread_record.unscoped.append(wrapper)
        config = conf.config_for(wrapper.alias)
        taken_at = None
        if config is not None and config.leak_threshold is not None:
            taken_at = _stack(sys._getframe(2))
            if not housekeeper.running:
                housekeeper.start()
        pool_for(wrapper.alias).held_outside(wrapper, taken_at)
    # In an event loop Django keeps a wrapper per async context and it cannot query:
    # nothing to adopt, and the finalizer frees its slot when the context goes.


# Frames kept of where a connection was taken outside units.
_STACK_LIMIT = 40


def _stack(frame: types.FrameType | None) -> list[tuple[str, int, str, None]]:
    """Where the code is: file, line and function of each frame, innermost last.

    Plain tuples, for traceback.StackSummary.from_list if it is ever shown: a fifth of
    the cost of traceback.extract_stack(), which reads every line.
    """
    frames: list[tuple[str, int, str, None]] = []
    while frame is not None and len(frames) < _STACK_LIMIT:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name, None))
        frame = frame.f_back
    frames.reverse()
    return frames


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- units -------------------------------------------------------------------------------


def _adopt_unscoped() -> list[BaseDatabaseWrapper]:
    """Return a new unit holding the wrappers this thread took outside any unit.

    Not one inside an atomic block, nor one whose methods someone replaced on the instance
    (Django's TestCase does both): it belongs to the code around the unit.
    """
    record = thread_record
    unit: list[BaseDatabaseWrapper] = []
    if record.unscoped:
        left = []
        for wrapper in record.unscoped:
            if _adoptable(wrapper):
                pool_for(wrapper.alias).held_in_unit(wrapper._keepalive)
                unit.append(wrapper)
            else:
                left.append(wrapper)
        record.unscoped = left
    return unit


def _adoptable(wrapper: BaseDatabaseWrapper) -> bool:
    """May a unit of work on this thread take over a wrapper taken outside any unit?"""
    return not wrapper.in_atomic_block and not _PATCHED.intersection(wrapper.__dict__)


# Instance attributes that mean the code around a unit has made a wrapper its own.
_PATCHED = frozenset(("connect", "cursor", "ensure_connection"))


def _end_through(unit: list[BaseDatabaseWrapper], failed: bool) -> None:
    """End ``unit`` and the units opened inside it and never closed."""
    scopes = thread_record.scopes
    if any(open_unit is unit for open_unit in scopes):
        while scopes:
            inner = scopes.pop()
            if inner:
                lifecycle.release(inner, failed)
            if inner is unit:
                break


def begin_unit() -> list[BaseDatabaseWrapper] | None:
    """Open a unit of work on this thread, adopting what the thread holds outside units.

    Return the unit, for ``end_unit``; None when the thread is already inside a request
    or unit, which stays in charge (a task run inline by the code of a request).
    """
    record = thread_record
    if record.scopes:
        return None
    unit = _adopt_unscoped()
    record.scopes.append(unit)
    return unit


def end_unit(unit: list[BaseDatabaseWrapper] | None, failed: bool) -> None:
    """Give back or close what ``unit`` took: commit if it succeeded, roll back if not.

    Idempotent; nothing for None (the unit was not opened).
    """
    if unit is not None:
        _end_through(unit, failed)


class _KeyedUnits(threading.local):
    """Units opened by a framework's start hook, found again by the key its end hook repeats.

    Per thread: a framework runs both hooks of a unit on the thread that runs it.
    """

    def __init__(self) -> None:
        # key (a task or message id) -> the unit begin_unit() opened, or None when the
        # work ran inside a request or another unit, which stays in charge.
        self.open: dict[Any, list[BaseDatabaseWrapper] | None] = {}


_keyed = _KeyedUnits()


def unit_started(key: Any) -> None:
    """A framework's unit of work ``key`` (a task or message id) starts on this thread.

    Connections it uses come from the pool, or are adopted if the thread already holds
    them. Inside a request or another unit it is part of that one.
    """
    _keyed.open[key] = begin_unit()


def unit_finished(key: Any, failed: bool = False) -> None:
    """The unit ``key`` ends: commit if it succeeded, roll back if it failed; give back.

    Nothing happens for a key that is not open (already finished, or never started).
    """
    keyed = _keyed.open
    if key in keyed:
        end_unit(keyed.pop(key), failed)


def units_abandoned() -> None:
    """End, as failures, the units of this thread whose end hook never came."""
    keyed = _keyed.open
    while keyed:
        _, unit = keyed.popitem()
        end_unit(unit, failed=True)


def close_if_unusable_or_obsolete(wrapper: BaseDatabaseWrapper) -> None:
    """Django's close_old_connections() on a kept wrapper: the end of a unit of work.

    Outside any request or unit, the thread's use of the wrapper ends as closing it would
    end it in plain Django: an open transaction is rolled back, and the connection goes
    back to the pool clean, to be checked before its next use. Inside a request or unit
    nothing happens: the unit's end decides. A wrapper the surrounding code owns (inside
    an atomic block, or with methods patched on the instance) gets Django's own rules.
    """
    index = _unscoped_index(wrapper)
    if index is None:
        return
    if not _adoptable(wrapper):
        type(wrapper).close_if_unusable_or_obsolete(wrapper)
        return
    del thread_record.unscoped[index]
    pool_for(wrapper.alias).held_in_unit(wrapper._keepalive)
    # No local refers to the thread's unscoped list here: a logged error's traceback keeps
    # this frame, and must not keep what the thread takes later alive after it dies.
    lifecycle.release([wrapper], failed=True)


def _unscoped_index(wrapper: BaseDatabaseWrapper) -> int | None:
    for index, held in enumerate(thread_record.unscoped):
        if held is wrapper:
            return index
    return None


def release_thread() -> None:
    """End every unit open on this thread (as failures) and give back what it holds.

    For a worker process that is shutting down.
    """
    units_abandoned()
    record = thread_record
    record.request = None
    record.outcome = None
    while record.scopes:
        lifecycle.release(record.scopes.pop(), failed=True)
    held, record.unscoped = record.unscoped, []
    for wrapper in held:
        pool_for(wrapper.alias).held_in_unit(wrapper._keepalive)
        if _adoptable(wrapper):
            lifecycle.release([wrapper], failed=True)


# -- requests --------------------------------------------------------------------------------


def on_request_started(sender: Any, **kwargs: Any) -> None:
    """Open the request's unit; apply Django's own rules to aliases left to Django.

    Raises ImproperlyConfigured, failing the request, while a KEEPALIVE_* setting is invalid.
    """
    record = thread_record
    if record.request is not None:
        # The previous request on this thread never sent request_finished (a WSGI server
        # that does not call close()): end its use now, as a failure.
        _end_request(record, failed=True)
    record.outcome = None
    unit = _adopt_unscoped()
    record.request = unit
    record.scopes.append(unit)
    _django_rules()


def on_request_finished(sender: Any, **kwargs: Any) -> None:
    """Give back or close every kept connection the request took."""
    record = thread_record
    if record.request is not None:
        # Without the middleware nobody says how the request ended (outcome None): roll
        # back, since a commit cannot be taken back.
        _end_request(record, failed=record.outcome is not SUCCEEDED)
    _django_rules()


def abort_request() -> None:
    """End the current request's use of connections now, as a failure; idempotent.

    For a streaming body that raised: Django's ASGIHandler then never calls
    response.close(), so request_finished never comes. Under WSGI close() still follows
    and finds nothing left to do.
    """
    if thread_record.request is not None:
        _end_request(thread_record, failed=True)


def _end_request(record: _ThreadRecord, failed: bool) -> None:
    unit = record.request
    record.request = None
    record.outcome = None
    if unit is not None:
        _end_through(unit, failed)


def _django_rules() -> None:
    """Do what Django's close_old_connections does, for aliases keepalive_mw leaves alone."""
    aliases = conf.unmanaged_aliases()
    if aliases:
        storage = connections._connections
        for alias in aliases:
            wrapper = getattr(storage, alias, None)
            if wrapper is not None:
                wrapper.close_if_unusable_or_obsolete()


def set_outcome(outcome: str) -> None:
    thread_record.outcome = outcome


# -- outside requests ----------------------------------------------------------------------


class scope(ContextDecorator):
    """Give code outside requests the same reuse and hygiene as a request.

    ``with keepalive_mw.scope():`` (or ``@keepalive_mw.scope()``) in a background thread,
    task or command: the block is a unit of work. Connections it uses are taken from the
    pool, or adopted if the thread already held them, and given back clean when the block
    ends, the transaction committed if the block succeeded and rolled back if it raised
    (or always rolled back with ``KEEPALIVE_END_OF_REQUEST="rollback"``).
    """

    def __enter__(self) -> scope:
        thread_record.scopes.append(_adopt_unscoped())
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        scopes = thread_record.scopes
        if scopes:
            lifecycle.release(scopes.pop(), failed=exc_type is not None)


# -- fork ----------------------------------------------------------------------------------


def after_fork() -> None:
    """In a forked child: the forking thread's record refers to the parent's connections."""
    for wrapper in thread_record.unscoped:
        kept = kept_of(wrapper)
        if kept is not None:
            kept.unscoped_since = None
    thread_record.scopes = []
    thread_record.unscoped = []
    _keyed.open = {}
    thread_record.request = None
    thread_record.outcome = None
