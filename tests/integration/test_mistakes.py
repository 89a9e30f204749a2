"""A mistake in the set-up gets one clear line, never a traceback or silence.

The example project in subprocesses, as a user would run it: ``manage.py`` commands and a
gunicorn server, with KEEPALIVE_* settings of the wrong type.
"""

import sys

import pytest

from . import servers

# The example project reads every KEEPALIVE_* environment variable as JSON.
WRONG_TYPES = [
    ("KEEPALIVE_MAX_AGE", '"600"', "keepalive_mw.E001"),
    ("KEEPALIVE_HEALTH_CHECKS", '"yes"', "keepalive_mw.E002"),
]


def _env(tmp_path, **overrides):
    return servers.example_env("sqlite", EXAMPLE_SQLITE_PATH=tmp_path / "db.sqlite3", **overrides)


def _django(env, *args):
    import subprocess

    return subprocess.run([sys.executable, "-m", "django", *args, "--settings", "example.settings"],
                          env=env, cwd=servers.REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("name, value, check_id", WRONG_TYPES)
def test_wrong_type_of_a_global_setting_is_reported_by_check(tmp_path, name, value, check_id):
    proc = _django(_env(tmp_path, **{name: value}), "check")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert check_id in output and name in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("name, value, check_id", WRONG_TYPES)
def test_wrong_type_of_a_global_setting_lets_other_commands_start(tmp_path, name, value,
                                                                  check_id):
    proc = _django(_env(tmp_path, **{name: value}), "shell", "-c", "print('started')")
    assert proc.returncode == 0 and "started" in proc.stdout, proc.stdout + proc.stderr
    # keepalive_status cannot report on invalid settings: one line, exit status 3.
    proc = _django(_env(tmp_path, **{name: value}), "keepalive_status")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and name in proc.stderr, proc.stderr


@pytest.mark.servers
def test_wrong_type_of_a_global_setting_lets_gunicorn_start_and_fails_requests(tmp_path):
    env = _env(tmp_path, KEEPALIVE_MAX_AGE='"600"')
    with servers.Server("sync", env, workers=1, ready_status=500) as server:
        status, _body = servers.http_get(server.port, "/health/")
        alive = server.proc.poll() is None
        stderr = server.stderr()
    assert status == 500 and alive, stderr
    assert "ImproperlyConfigured: KEEPALIVE_MAX_AGE must be a number of seconds" in stderr, stderr
