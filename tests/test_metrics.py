"""Prometheus metrics, parsed by prometheus_client's own parser, single and multi-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from keepalive_mw import housekeeper, metrics
from tests.helpers import in_thread, wsgi_get

ROOT = Path(__file__).resolve().parent.parent


def samples(text):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.django_db(transaction=True, databases=["default"])
@override_settings(KEEPALIVE_PROMETHEUS=True)
def test_counters_are_exported_with_django_prometheus_style_names():
    metrics.sync()
    before = samples(generate_latest(REGISTRY).decode())
    for _ in range(4):
        in_thread(wsgi_get, "/pid/default/")
    metrics.sync()
    after = samples(generate_latest(REGISTRY).decode())
    key = ("django_keepalive_connections_reused_total",
           (("alias", "default"), ("vendor", "postgresql")))
    assert after[key] - before.get(key, 0) == 3
    idle = ("django_keepalive_connections",
            (("alias", "default"), ("state", "idle"), ("vendor", "postgresql")))
    assert after[idle] == 1


@pytest.mark.django_db(transaction=True, databases=["default"])
@override_settings(KEEPALIVE_PROMETHEUS=True)
def test_connections_held_outside_units_have_their_own_state_and_age():
    import threading

    from django.db import close_old_connections, connections

    close_old_connections()
    held, done = threading.Event(), threading.Event()

    def hold():
        connections["default"].ensure_connection()
        held.set()
        done.wait(10)
        close_old_connections()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        metrics.sync()
        found = samples(generate_latest(REGISTRY).decode())
    finally:
        done.set()
        thread.join(10)
    labels = (("alias", "default"), ("vendor", "postgresql"))
    state = ("django_keepalive_connections", (("alias", "default"), ("state", "unscoped"),
                                              ("vendor", "postgresql")))
    assert found[state] == 1
    assert found[("django_keepalive_connections_unscoped_age_seconds", labels)] >= 0


@override_settings(KEEPALIVE_PROMETHEUS=True)
def test_housekeeper_syncs_often_when_metrics_are_on():
    assert housekeeper.interval() <= metrics.SYNC_INTERVAL


def test_multi_process_workers_add_up(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, str(ROOT / "tests" / "metrics_worker.py")], cwd=ROOT,
                       env=env, check=True, timeout=120)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    found = samples(generate_latest(registry).decode())
    labels = (("alias", "default"), ("vendor", "postgresql"))
    assert found[("django_keepalive_connections_reused_total", labels)] == 4
    assert found[("django_keepalive_connections_opened_total", labels)] == 2
