"""A worker process for tests/test_metrics.py: serve requests, copy counters into metrics."""

import os

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"

import django  # noqa: E402

django.setup()

from django.test import override_settings  # noqa: E402

from keepalive_mw import metrics  # noqa: E402
from tests.helpers import in_thread, wsgi_get  # noqa: E402

with override_settings(KEEPALIVE_PROMETHEUS=True):
    for _ in range(3):
        assert in_thread(wsgi_get, "/pid/default/")[0] == 200
    metrics.sync()
