"""Huey: each task, from ``executing`` to the signal that ends it, is a unit of work."""

import threading

from huey import signals

import keepalive_mw

# Signals that do not end a running task. "complete" ends it as a success, any other
# as a failure (the first end counts: "error" then "retrying" ends it once).
NOT_AN_END = frozenset((signals.SIGNAL_EXECUTING, signals.SIGNAL_ENQUEUED,
                        signals.SIGNAL_SCHEDULED))


class KeepAliveUnits:
    """Receives all of ``huey``'s signals: ``huey.signal()(KeepAliveUnits(huey))``."""

    def __init__(self, huey):
        self.huey = huey
        self.last = threading.local()  # the last task started on this thread

    def __call__(self, signal, task, *args):
        if self.huey.immediate:
            return  # run by its caller, as close_db knows: the caller's unit decides
        if signal == signals.SIGNAL_EXECUTING:
            # A unit whose end never came (Huey's storage failed): roll it back.
            previous = getattr(self.last, "task_id", None)
            if previous is not None:
                keepalive_mw.unit_finished(previous, failed=True)
            self.last.task_id = task.id
            keepalive_mw.unit_started(task.id)
        elif signal not in NOT_AN_END:
            failed = signal != signals.SIGNAL_COMPLETE
            keepalive_mw.unit_finished(task.id, failed=failed)
