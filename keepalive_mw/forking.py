"""Fork safety: a child never uses, nor ends, the server sessions its parent opened.

A forked child (gunicorn ``--preload``, Celery prefork, multiprocessing, Django's parallel
test runner) inherits the parent's sockets. Using one from both processes mixes their
protocol streams; closing one in the child sends the server a Terminate message that ends
the parent's session. So in the child, each inherited socket is first pointed at /dev/null,
then the driver's connection is closed: the driver writes its goodbye into /dev/null and
the parent's session lives on.

The wrapper objects of the forking thread stay what ``connections[alias]`` returns in the
child, as in plain Django: code stores state on them (the test runner's serialized database
contents, third-party attributes). Only their session is let go of; their next use opens
the child's own connection, kept like any other.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from django.db import connections

from . import housekeeper, metrics
from .pool import CLOSE_FORK, drop_all, kept_of, pool_for

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper


def _forget_inherited(wrapper: BaseDatabaseWrapper) -> None:
    """Let go of a kept wrapper's inherited session without ending it; keep the object."""
    kept = kept_of(wrapper)
    raw = wrapper.connection
    if kept is None:
        return
    if kept.finalizer is not None:
        kept.finalizer.detach()  # the child's pools start empty: no slot to free
    if raw is None:
        return
    if kept.fd is not None:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, kept.fd)
        finally:
            os.close(devnull)
        try:
            raw.close()
        except Exception:
            pass
    # SQLite: the file is the database and the parent's locks are its own; drop it.
    # connect() resets the rest of Django's transaction state.
    wrapper.connection = None
    wrapper.in_atomic_block = False


def after_fork_in_child() -> None:
    """Let go of every kept connection inherited from the parent process."""
    from . import borrow, lifecycle

    housekeeper.after_fork()
    metrics.after_fork()
    lifecycle.after_fork()
    for inherited in drop_all():
        # Not take_all_idle(): another parent thread may have held the lock at fork time,
        # and in the child nobody would ever release it.
        for wrapper in inherited._idle:
            _forget_inherited(wrapper)
            pool_for(inherited.alias).stats["connections_closed_" + CLOSE_FORK] += 1
    # Wrappers the forking thread held (a preloaded app that queried at import, the test
    # runner's databases): the same objects, each with a fresh slot in the child's pool.
    storage = connections._connections
    for alias in connections:
        wrapper = getattr(storage, alias, None)
        if wrapper is not None and kept_of(wrapper) is not None:
            if borrow.is_front(wrapper):
                # A front (release mode "transaction"): the parent's session is its carrier's.
                borrow.forget_inherited(wrapper, _forget_inherited)
            else:
                _forget_inherited(wrapper)
            lifecycle.keep_inherited(wrapper)


def install() -> None:
    os.register_at_fork(after_in_child=after_fork_in_child)
