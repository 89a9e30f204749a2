"""Dramatiq: each message, before to after ``process_message``, is a unit of work."""

import dramatiq

import keepalive_mw


class KeepAliveUnits(dramatiq.Middleware):
    """Commit what a message left open if its actor succeeded, else roll it back."""

    def before_process_message(self, broker, message):
        keepalive_mw.unit_started(message.message_id)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        keepalive_mw.unit_finished(message.message_id, failed=exception is not None)

    def after_skip_message(self, broker, message):
        # A middleware listed after this one skipped the message (AgeLimit does).
        keepalive_mw.unit_finished(message.message_id, failed=True)
