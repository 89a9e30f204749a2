"""Channels ASGI entry point: ``daphne example.asgi_channels:application``.

``/channels/insert/`` and ``/channels/fail/`` are Channels consumers (see
example/shop/consumers.py); every other path goes to Django's ASGI handler (``/health/``...).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")

django_application = get_asgi_application()  # sets Django up before the consumers import models

from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import re_path

from example.shop import consumers

application = ProtocolTypeRouter({
    "http": URLRouter(consumers.urlpatterns() + [re_path(r"", django_application)]),
})
