"""keepalive_mw works under Django's test tools and never blocks test databases."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import close_old_connections, connections
from django.test import Client

import keepalive_mw
from keepalive_mw import get_stats
from tests.helpers import in_thread, pg_admin, pg_sessions, wsgi_get
from tests.testapp.models import Item

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db(databases=["default"])
def test_test_client_inside_a_transactional_test():
    Item.objects.create(name="x")
    client = Client()
    for _ in range(3):
        assert client.get("/read/default/").content == b"1"
    assert connections["default"].in_atomic_block  # the test's transaction survived
    assert Item.objects.count() == 1


@pytest.mark.django_db(transaction=True, databases=["default"])
def test_close_old_connections_called_directly_leaves_kept_connections_alone():
    def job():
        with keepalive_mw.scope():
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                first = cursor.fetchone()[0]
            close_old_connections()
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                return first, cursor.fetchone()[0]

    first, second = in_thread(job)
    assert first == second
    assert in_thread(wsgi_get, "/pid/default/")[1] == str(first)


@pytest.mark.django_db(transaction=True, databases=["default"])
def test_creating_or_dropping_a_database_closes_idle_kept_connections():
    admin = pg_admin()
    kept = int(in_thread(wsgi_get, "/pid/default/")[1])
    assert kept in {pid for pid, _ in pg_sessions(admin)}
    with connections["default"]._nodb_cursor() as cursor:  # as create/drop test db do
        cursor.execute("SELECT 1")
    assert kept not in {pid for pid, _ in pg_sessions(admin)}
    assert get_stats()["default"]["connections_idle"] == 0


def test_django_test_runner_creates_uses_and_drops_its_databases():
    result = subprocess.run(
        [sys.executable, "-m", "django", "test", "tests.runner_cases", "-v", "2", "--noinput",
         "--settings", "tests.runner_settings"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Ran 2 tests" in output and "OK" in output
    assert "Destroying test database for alias 'default'" in output
    assert "being accessed by other users" not in output


def test_django_parallel_runner_restores_serialized_contents_in_its_workers():
    """The runner serializes the test database onto the connection object, then forks its
    workers: each must find the same object, whose next use opens its own connection."""
    result = subprocess.run(
        [sys.executable, "-m", "django", "test", "tests.runner_parallel.cases", "--parallel",
         "2", "-v", "2", "--noinput", "--settings", "tests.runner_parallel.settings"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Cloning test database for alias 'default'" in output, output  # really parallel
    assert "Ran 4 tests" in output and "OK" in output, output
    assert "being accessed by other users" not in output, output
