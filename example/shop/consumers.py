"""Channels consumers of the example project (``example.asgi_channels``). Their database
work runs through Channels' ``database_sync_to_async``; nothing of keepalive_mw's."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.http import AsyncHttpConsumer

from example.shop import work

insert = database_sync_to_async(work.insert)
insert_then_fail = database_sync_to_async(work.insert_then_fail)


class _TextConsumer(AsyncHttpConsumer):
    async def send_text(self, status: int, text: str) -> None:
        await self.send_response(status, f"{text}\n".encode(),
                                 headers=[(b"Content-Type", b"text/plain")])


class InsertConsumer(_TextConsumer):
    """Insert a ``channels_ok`` row; answer with the database session id."""

    async def handle(self, body: bytes) -> None:
        _pid, session = await insert("channels_ok")
        await self.send_text(200, str(session))


class InsertThenFailConsumer(_TextConsumer):
    """Insert a ``channels_fail`` row, then fail: answer 500 and keep serving."""

    async def handle(self, body: bytes) -> None:
        try:
            await insert_then_fail("channels_fail")
        except work.ExampleFailure as exc:
            await self.send_text(500, f"failed: {exc}")


def urlpatterns() -> list[Any]:
    from django.urls import path

    return [
        path("channels/insert/", InsertConsumer.as_asgi()),
        path("channels/fail/", InsertThenFailConsumer.as_asgi()),
    ]
