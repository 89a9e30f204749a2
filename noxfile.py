"""The supported versions, as CI runs them (``bash .ci/run`` runs every session).

    python -m pip install nox
    nox -l                                          # the legs
    nox -s "tests(django='6.1', python='3.13')"     # one leg
    nox -s "tests(django='5.2', python='3.10')" -- -k fork   # pytest arguments after --

Each leg installs the package with its ``[test]`` extra and that Django series into its own
virtualenv (``.nox/``; made with uv when it is installed, else venv and pip) and runs pytest against the real PostgreSQL and MariaDB servers of
``tests/settings.py``. The environment is passed through, so ``KEEPALIVE_TEST_RUN`` and the
other ``KEEPALIVE_TEST_*`` variables reach the suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

# Django series -> the Python versions CI runs it on (Django 6.x needs Python 3.12+).
MATRIX: dict[str, tuple[str, ...]] = {
    "5.2": ("3.10", "3.11", "3.12", "3.13"),
    "6.0": ("3.12", "3.13"),
    "6.1": ("3.12", "3.13"),
}
# Legs that run the whole suite, server and worker tests included: the oldest pair and the
# newest pair. The other legs run the suite without the tests marked "servers" (real
# gunicorn, uvicorn, daphne, Celery and db_worker processes), which take most of the time;
# KEEPALIVE_FULL_SUITE=1 runs the whole suite on any leg.
FULL: frozenset[tuple[str, str]] = frozenset({("5.2", "3.10"), ("6.1", "3.13")})
LEGS = [(django, python) for django, pythons in MATRIX.items() for python in pythons]

# uv writes no bytecode by default, and with PYTHONDONTWRITEBYTECODE set (as on CI
# machines) Python never would: every subprocess of the suite (servers, workers, commands)
# would compile Django from source again, doubling the suite's time.
os.environ["UV_COMPILE_BYTECODE"] = "1"
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "uv|venv"  # uv when installed: installs in seconds
nox.options.error_on_missing_interpreters = True  # a leg that cannot run is a failure
nox.options.reuse_venv = "yes"


def _pyenv_interpreters_first() -> None:
    """Let nox find pyenv's interpreters (``python3.12``...) without ``pyenv global``."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if root.is_dir():
        found = sorted((path / "bin" for path in root.iterdir() if (path / "bin").is_dir()),
                       reverse=True)
        os.environ["PATH"] = os.pathsep.join([*map(str, found), os.environ.get("PATH", "")])


_pyenv_interpreters_first()


@nox.session
@nox.parametrize("django, python", LEGS)
def tests(session: nox.Session, django: str) -> None:
    """The test suite on one Django series and Python version."""
    session.install("-e", ".[test]", f"Django~={django}.0")
    session.run("python", "-c", "import django, sys; print('Django', django.get_version(),"
                " 'on Python', sys.version.split()[0])")
    full = (django, session.python) in FULL or os.environ.get("KEEPALIVE_FULL_SUITE") == "1"
    selection = [] if full else ["-m", "not servers"]
    session.run("python", "-m", "pytest", *selection, *session.posargs)
