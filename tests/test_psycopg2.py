"""PostgreSQL through psycopg2: reuse, and a killed session fails no request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("release", ["request", "transaction"])
def test_psycopg2_connections_are_kept_and_checked_without_a_round_trip(release):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "psycopg2_script.py")], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "KEEPALIVE_TEST_RELEASE": release},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    expected = ["reused", "True", "statuses", "[200]", "new_pids", "1", "closed_broken", "1"]
    if release == "transaction":
        expected += ["transaction_mode", "True"]
    assert result.stdout.split() == expected
