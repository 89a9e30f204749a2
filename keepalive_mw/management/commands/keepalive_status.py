"""manage.py keepalive_status: every connection the app holds, as the servers see them."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from keepalive_mw import conf, status

# --fail-on conditions: name -> (what it measures, unit kind).
CONDITIONS = {
    "idle-in-transaction": "longest time a session has sat idle in transaction",
    "transaction": "longest open transaction",
    "usage": "connections in use on the server against max_connections",
    "app-usage": "this application's connections against max_connections",
    "connections": "this application's connections",
    "cl-waiting": "clients waiting for a server connection in PgBouncer (needs PGBOUNCER_ADMIN)",
    "maxwait": "longest wait of a client in PgBouncer's queue (needs PGBOUNCER_ADMIN)",
}
# Conditions read from PgBouncer's SHOW POOLS rather than from the database server.
POOL_CONDITIONS = ("cl-waiting", "maxwait")
_CONDITION = re.compile(r"^(?P<name>[a-z-]+)>(?P<value>\d+(?:\.\d+)?)(?P<unit>s|m|h|%)?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, None: 1}

# Exit statuses, for monitoring probes (Nagios plugin codes: 1 warning, 2 critical,
# 3 unknown). A probe with a typo must not look like an alert.
EXIT_CONDITION = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 3


def usage_error(message: str) -> CommandError:
    return CommandError(message, returncode=EXIT_USAGE)


def parse_condition(text: str) -> tuple[str, float]:
    """Parse ``NAME>VALUE[unit]`` into (name, limit in seconds, percent or count)."""
    # PgBouncer's own column names (cl_waiting) are accepted as written.
    match = _CONDITION.match(text.replace(" ", "").replace("_", "-"))
    if not match or match["name"] not in CONDITIONS:
        raise usage_error(
            f"invalid --fail-on {text!r}: use NAME>VALUE with NAME one of "
            + ", ".join(CONDITIONS) + " (e.g. idle-in-transaction>30s, usage>80%)."
        )
    name, value, unit = match["name"], float(match["value"]), match["unit"]
    if name in ("usage", "app-usage"):
        allowed, takes = {"%", None}, "a percentage, e.g. 80%"
    elif name in ("connections", "cl-waiting"):
        allowed, takes = {None}, "a count, e.g. 50"
    else:
        allowed, takes = set(_SECONDS), "a duration in s, m or h, e.g. 30s"
    if unit not in allowed:
        raise usage_error(f"invalid --fail-on {text!r}: {name} takes {takes}.")
    if allowed == set(_SECONDS):
        value *= _SECONDS[unit]
    return name, value


def measure(name: str, rep: dict[str, Any]) -> float | None:
    """The value of condition ``name`` for one alias's report; None when not reported."""
    if name in POOL_CONDITIONS:
        pools = (rep["pooler"] or {}).get("pools")
        if pools is None:
            return None
        if name == "cl-waiting":
            return sum(pool["cl_waiting"] or 0 for pool in pools)
        return max((pool["maxwait"] or 0 for pool in pools), default=0)
    server = rep["server"]
    if server is None or "sessions" not in server:
        return None
    sessions = server["sessions"]
    if name == "idle-in-transaction":
        return max((s["state_seconds"] or 0 for s in sessions["idle_in_transaction"]), default=0)
    if name == "transaction":
        return max((s["transaction_seconds"] or 0 for s in sessions["longest_transactions"]),
                   default=0)
    if name == "usage":
        return server["headroom"]["usage_percent"]
    if name == "app-usage":
        return server["headroom"]["app_usage_percent"]
    return sessions["count"]


class Command(BaseCommand):
    help = ("Report the keepalive settings in force and every connection the application "
            "holds, as the database servers see them.")
    requires_system_checks: list[str] = []

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def error(message: str) -> None:
            # argparse would exit with 2, this command's "unreachable".
            if parser.called_from_command_line:
                parser.print_usage(sys.stderr)
                parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message}\n")
            raise usage_error(f"Error: {message}")

        parser.error = error  # type: ignore[method-assign]
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", choices=list(connections), metavar="ALIAS",
                            help="Report one alias (default: all). Choices: "
                            + ", ".join(connections) + ".")
        parser.add_argument("--format", choices=["text", "json"], default="text")
        parser.add_argument("--watch", type=float, metavar="SECONDS",
                            help="Refresh every SECONDS until interrupted.")
        parser.add_argument("--fail-on", action="append", default=[], metavar="CONDITION",
                            help="Exit with status 1 when CONDITION holds, e.g. "
                            "idle-in-transaction>30s, usage>80%%, connections>50, maxwait>5s. "
                            "Names: " + ", ".join(CONDITIONS) + ".")

    def handle(self, *args: Any, **options: Any) -> None:
        conditions = [parse_condition(text) for text in options["fail_on"]]
        if options["watch"] is not None and options["watch"] <= 0:
            raise usage_error("--watch takes a number of seconds greater than 0")
        aliases = [options["database"]] if options["database"] else list(connections)
        while True:
            try:
                self.check_pool_conditions(aliases, conditions)
                code = self.run_once(aliases, options["format"], conditions)
            except ImproperlyConfigured as exc:  # an invalid KEEPALIVE_* setting
                raise usage_error(str(exc)) from None
            if options["watch"] is None:
                break
            try:
                time.sleep(options["watch"])
            except KeyboardInterrupt:
                break
        if code:
            sys.exit(code)

    def check_pool_conditions(self, aliases: list[str],
                              conditions: list[tuple[str, float]]) -> None:
        """A condition on PgBouncer's pools needs an alias whose console can be read."""
        asked = [name for name, _limit in conditions if name in POOL_CONDITIONS]
        if not asked:
            return
        configs = [conf.config_for(alias) for alias in aliases]
        if not any(config and config.pgbouncer_admin is not None for config in configs):
            raise usage_error(
                f"--fail-on {asked[0]} reads PgBouncer's SHOW POOLS, and no alias reported "
                f"({', '.join(aliases)}) sets PGBOUNCER_ADMIN: set "
                "DATABASES[alias][\"KEEPALIVE\"][\"PGBOUNCER_ADMIN\"] (see keepalive_status "
                "in the README).")

    def run_once(self, aliases: list[str], fmt: str, conditions: list[tuple[str, float]]) -> int:
        reports = [status.report(alias) for alias in aliases]
        failed = []
        for rep in reports:
            for name, limit in conditions:
                value = measure(name, rep)
                if value is not None and value > limit:
                    failed.append({"alias": rep["alias"], "condition": name,
                                   "value": value, "limit": limit})
        unreachable = [rep for rep in reports
                       if rep["error"] or (rep["pooler"] and rep["pooler"]["error"])]
        code = EXIT_UNREACHABLE if unreachable else EXIT_CONDITION if failed else 0
        if fmt == "json":
            document = {"schema_version": status.SCHEMA_VERSION, "generated_at":
                        status.now_iso(), "aliases": reports, "failed_conditions": failed,
                        "exit_status": code}
            self.stdout.write(json.dumps(document, indent=2))
        else:
            from keepalive_mw.status_text import render

            self.stdout.write(render(reports, failed, self.style))
        return code
