"""KeepAliveMiddleware: tells the end-of-request handling whether the request failed."""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Iterator

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from .units import FAILED, SUCCEEDED, abort_request, set_outcome


def _mark_succeeded() -> None:
    set_outcome(SUCCEEDED)


def _mark_failed() -> None:
    set_outcome(FAILED)


class KeepAliveMiddleware:
    """Record how each request ended: failed on an exception or a 5xx response.

    Put it first in MIDDLEWARE so that it sees the final response. The outcome is handed
    over in ``response.close()``, on the thread that sends ``request_finished``, where the
    open transaction is committed (success) or rolled back (failure).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        if not apps.is_installed("keepalive_mw"):
            # Without the app nothing is kept and no check runs: say so at start-up.
            raise ImproperlyConfigured(
                "KeepAliveMiddleware needs the keepalive_mw app: add \"keepalive_mw\" to "
                "INSTALLED_APPS."
            )
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        try:
            response = self.get_response(request)
        except BaseException:
            set_outcome(FAILED)  # same thread as request_finished on sync stacks
            raise
        return _watch(response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        return _watch(await self.get_response(request))


def _watch(response: HttpResponseBase) -> HttpResponseBase:
    """Arrange for ``response.close()`` to report the outcome before request_finished."""
    if response.status_code >= 500:
        response._resource_closers.append(_mark_failed)
    elif response.streaming:
        # The body runs after every middleware returned; a generator that raises makes
        # the request a failure even though a 200 status line went out.
        outcome = [SUCCEEDED]
        if response.is_async:
            response.streaming_content = _watch_async(response.streaming_content, outcome)
        else:
            response.streaming_content = _watch_sync(response.streaming_content, outcome)
        response._resource_closers.append(lambda: set_outcome(outcome[0]))
    else:
        response._resource_closers.append(_mark_succeeded)
    return response


def _watch_sync(content: Iterator[bytes], outcome: list[str]) -> Iterator[bytes]:
    try:
        yield from content
    except Exception:  # not GeneratorExit: a client that hangs up is no failure
        outcome[0] = FAILED
        # Runs on the request's thread (ASGI consumes sync bodies there); close() and so
        # request_finished may never come.
        abort_request()
        raise


async def _watch_async(content: AsyncIterator[bytes], outcome: list[str]) -> AsyncIterator[bytes]:
    try:
        async for chunk in content:
            yield chunk
    except Exception:
        outcome[0] = FAILED
        # The body runs in the event loop; the request's connections are on its
        # thread-sensitive thread, where sync_to_async runs this.
        await sync_to_async(abort_request)()
        raise
