"""The keepalive_status report as text: one block per alias, within 100 columns."""

from __future__ import annotations

from typing import Any

from .pgbouncer import POOL_COUNTS

WIDTH = 100
LABEL = 12


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g} s"


def _line(label: str, text: str) -> str:
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(current) + 1 + len(word) > WIDTH - LABEL - 2:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    head = f"  {label:<{LABEL - 2}}" if label else " " * LABEL
    return "\n".join(
        (head if i == 0 else " " * LABEL) + line for i, line in enumerate(lines))


def _settings(values: dict[str, Any]) -> str:
    bound = values["MAX_CONNECTIONS"]
    pooler = [f"pooler {values['POOLER']} mode"] if values.get("POOLER") else []
    return " · ".join(pooler + [
        f"max age {_seconds(values['MAX_AGE'])}",
        f"health checks {'on' if values['HEALTH_CHECKS'] else 'off'}",
        f"ping after {_seconds(values['PING_AFTER'])} (timeout {_seconds(values['PING_TIMEOUT'])})",
        f"idle timeout {_seconds(values['IDLE_TIMEOUT'])}",
        f"end of request {values['END_OF_REQUEST']}",
        f"reset session {'on' if values['RESET_SESSION'] else 'off'}",
        f"release per {values['RELEASE']}",
        "bound none" if bound is None else
        f"bound {bound} (wait {_seconds(values['WAIT_TIMEOUT'])})",
    ])


def _headroom(room: dict[str, Any]) -> str:
    """The percentages are of the connections named first: those clients can open."""
    text = (f"{room['in_use']} of {room['available_connections']} connections in use "
            f"({room['usage_percent']}%), {room['in_use_by_app']} by this app "
            f"({room['app_usage_percent']}%)")
    if room["reserved_connections"]:
        text += (f"; max_connections {room['max_connections']} less "
                 f"{room['reserved_connections']} reserved")
    return text


def _pools(pooler: dict[str, Any], style: Any) -> list[str]:
    if pooler["error"]:
        # One line, whatever its length, as for the server.
        return [style.ERROR(f"  {'pgbouncer':<{LABEL - 2}}unreachable: {pooler['error']}")]
    if pooler["pools"] is None:
        return []
    if not pooler["pools"]:
        return [_line("pools", "PgBouncer has no pool of this database yet")]
    return [_line("pools", f"{pool['database']}/{pool['user']} ({pool['pool_mode']}): " +
                  " · ".join(f"{name} {pool[name]}" for name in POOL_COUNTS) +
                  f" · maxwait {_seconds(pool['maxwait'])}")
            for pool in pooler["pools"]]


def _who(session: dict[str, Any]) -> str:
    return session["process"] or session["client"] or "?"


def render(reports: list[dict[str, Any]], failed: list[dict[str, Any]], style: Any) -> str:
    out: list[str] = []
    for rep in reports:
        managed = "kept by keepalive_mw" if rep["managed"] else "left to Django"
        out.append(style.MIGRATE_HEADING(f"{rep['alias']}  ({rep['vendor']}, {managed})"))
        if rep["settings"]:
            out.append(_line("settings", _settings(rep["settings"])))
        for warning in rep["warnings"]:
            out.append(style.WARNING(_line("warning", warning)))
        if rep.get("pooler"):
            out.append(_line("pooler", rep["pooler"]["sessions_note"]))
            out.extend(_pools(rep["pooler"], style))
        if rep["error"]:
            # One line, whatever its length: the reason must stay whole and greppable.
            out.append(style.ERROR(f"  {'error':<{LABEL - 2}}unreachable: {rep['error']}"))
            continue
        server = rep["server"]
        if "sessions" not in server:
            out.append(_line("sqlite", f"{server['file']} ({server['file_bytes']} bytes, "
                                       f"journal {server['journal_mode']})"))
            out.append(_line("", server["note"]))
            continue
        room = server["headroom"]
        out.append(_line("server", _headroom(room)))
        sessions = server["sessions"]
        states = " · ".join(f"{state} {n}" for state, n in sessions["by_state"].items() if n)
        out.append(_line("sessions", f"{sessions['count']}" + (f": {states}" if states else "")))
        if sessions["by_process"]:
            out.append(_line("processes", " · ".join(
                f"{who} {n}" for who, n in sessions["by_process"].items())))
        if sessions["oldest"] and sessions["oldest"][0]["connected_seconds"] is not None:
            out.append(_line("oldest", " · ".join(
                f"{s['id']} {_duration(s['connected_seconds'])} ({_who(s)})"
                for s in sessions["oldest"][:3])))
        if sessions["idle_in_transaction"]:
            out.append(style.WARNING(_line("idle in tx", " · ".join(
                f"{s['id']} for {_duration(s['state_seconds'])} ({_who(s)})"
                for s in sessions["idle_in_transaction"]))))
        others = server.get("other_sessions_on_database")
        if others and any(others.values()):
            out.append(_line("others", "sessions of other clients on this database: " +
                             " · ".join(f"{k} {v}" for k, v in others.items() if v)))
    for fail in failed:
        out.append(style.ERROR(
            f"FAIL {fail['alias']}: {fail['condition']} is {fail['value']:g}, "
            f"over {fail['limit']:g}"))
    return "\n".join(out)
