"""What happens to a connection between two uses: end-of-use cleanup and pre-reuse checks."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import conf, health
from .pool import (
    CLOSE_AGE,
    CLOSE_BROKEN,
    CLOSE_ERRORS,
    CLOSE_LEAKED_ATOMIC,
    KeptConnection,
)

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("keepalive_mw")


def end_of_use(
    wrapper: BaseDatabaseWrapper,
    kept: KeptConnection,
    config: conf.AliasConfig,
    failed: bool,
    stats: dict[str, int],
) -> str | None:
    """Leave ``wrapper`` clean for its next user; return why it must be closed, or None.

    Run in the thread that used the wrapper, after its unit of work (a request, a scope,
    a task) is over.
    """
    alias = wrapper.alias
    if wrapper.in_atomic_block:
        # A transaction.atomic() block never exited (a leaked context manager, a
        # generator abandoned mid-block): its work was never meant to be committed.
        logger.warning(
            "atomic block still open on database alias %r at the end of its unit of work "
            "(request, scope or task): rolled back, connection closed",
            alias,
        )
        try:
            wrapper.connection.rollback()
        except Exception:
            pass
        stats["transactions_rolled_back"] += 1
        wrapper.in_atomic_block = False
        wrapper.atomic_blocks = []
        wrapper.savepoint_ids = []
        wrapper.needs_rollback = False
        return CLOSE_LEAKED_ATOMIC

    state = health.transaction_state(wrapper)
    if state == health.BROKEN:
        return CLOSE_BROKEN
    kept.suspect = wrapper.errors_occurred
    expected = wrapper.settings_dict["AUTOCOMMIT"]
    # A commit is under way: if it fails, work the unit did is lost (worth a traceback);
    # a failed rollback or clean-up loses nothing that was meant to last.
    committing = False
    try:
        if state == health.IN_TRANSACTION:
            if failed or config.end_of_request == conf.ROLLBACK:
                wrapper.rollback()
                stats["transactions_rolled_back"] += 1
                action = "rolled back"
            else:
                committing = True
                wrapper.commit()
                committing = False
                stats["transactions_committed"] += 1
                action = "committed"
            log = logger.debug if not expected else logger.warning
            log("transaction left open on database alias %r %s at the end of its unit of work",
                alias, action)
        if wrapper.autocommit != expected:
            wrapper.set_autocommit(expected)
        if config.reset_session:
            health.reset_session(wrapper)
    except Exception as exc:
        if committing:
            logger.exception(
                "could not commit the transaction on database alias %r at the end of its "
                "unit of work: connection closed, the transaction is lost",
                alias,
            )
        else:
            logger.warning(
                "could not clean up a connection of database alias %r at the end of its "
                "unit of work (%s: %s): connection closed",
                alias, type(exc).__name__, str(exc).strip(),
            )
        return CLOSE_ERRORS
    wrapper.run_on_commit = []
    wrapper.queries_log.clear()
    now = time.monotonic()
    if kept.expired(config.max_age, now):
        return CLOSE_AGE
    kept.last_used_at = now
    return None


def fit_for_reuse(
    wrapper: BaseDatabaseWrapper,
    kept: KeptConnection,
    config: conf.AliasConfig,
    stats: dict[str, int],
) -> str | None:
    """Check an idle kept wrapper before handing it out; return why it is unfit, or None."""
    now = time.monotonic()
    if kept.expired(config.max_age, now):
        return CLOSE_AGE
    if not config.health_checks:
        return None
    stats["checks_free"] += 1
    if health.driver_says_closed(wrapper.connection):
        stats["checks_failed"] += 1
        return CLOSE_BROKEN
    poller = kept.poller
    needs_ping = kept.suspect or (poller is not None and health.socket_has_news(poller))
    if not needs_ping and config.ping_after is not None:
        needs_ping = now - kept.last_used_at >= config.ping_after
    if needs_ping:
        stats["checks_ping"] += 1
        if not health.ping(wrapper, kept.fd, config.ping_timeout):
            stats["checks_failed"] += 1
            return CLOSE_BROKEN
        kept.suspect = False
        wrapper.errors_occurred = False  # as Django does once is_usable() says so
    return None
