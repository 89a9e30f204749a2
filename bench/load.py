"""HTTP load from a separate process: ``wrk`` when installed, else a Python client.

Both are bounded in time and requests and only ever target 127.0.0.1, and send each request
on a new HTTP connection ("Connection: close", as nginx's default proxying does), so that the
kernel spreads requests over a server's workers; KAMW_HTTP_KEEPALIVE=1 keeps connections
open instead. Either returns the
same figures: requests, duration, requests/s, p50/p90/p99 and longest latency, non-2xx/3xx
responses and socket errors.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRK = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
LUA = HERE / "wrk_report.lua"


def tool() -> str:
    return "wrk" if WRK and not os.environ.get("BENCH_PYTHON_CLIENT") else "python"


def wrk_version() -> str | None:
    if not WRK:
        return None
    out = subprocess.run([WRK, "--version"], capture_output=True, text=True)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].split("Copyright")[0].strip() if text else None


def run(port: int, path: str, *, clients: int, duration: float, max_requests: int = 200_000,
        stop: threading.Event | None = None, python: bool = False) -> dict:
    """Send GET ``path`` from ``clients`` keep-alive connections for ``duration`` seconds.

    ``stop`` (set by a watchdog) ends the load early: wrk gets SIGINT and still reports.
    ``python``: the Python client whatever is installed. wrk drops the requests still in
    flight when its time is up; the Python client waits for them (up to their 10 s timeout)
    and counts them, so that a request stalled at the end is not lost from the figures.
    """
    url = f"http://127.0.0.1:{port}{path}"
    if tool() == "wrk" and not python:
        return _wrk(url, clients, duration, stop)
    return _python(port, path, clients, duration, max_requests, stop)


def _wrk(url: str, clients: int, duration: float, stop) -> dict:
    cmd = [WRK, "-t1", f"-c{clients}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "-s", str(LUA), url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + duration + 30
    interrupted = False
    while proc.poll() is None:
        if (stop is not None and stop.is_set() and not interrupted) or time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            interrupted = True
            if time.monotonic() > deadline + 10:
                proc.kill()
        time.sleep(0.05)
    out, err = proc.communicate(timeout=10)
    line = next((l for l in out.splitlines() if l.startswith("KAMW_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result ({proc.returncode}): {out[-2000:]} {err[-2000:]}")
    data = json.loads(line[len("KAMW_JSON "):])
    seconds = data["duration_us"] / 1e6
    errors = data["errors"]
    return {
        "tool": "wrk",
        "requests": data["requests"],
        "duration_s": round(seconds, 3),
        "rps": data["requests"] / seconds if seconds else 0.0,
        "p50_ms": data["latency_us"]["p50"] / 1000,
        "p90_ms": data["latency_us"]["p90"] / 1000,
        "p99_ms": data["latency_us"]["p99"] / 1000,
        "max_ms": data["latency_us"]["max"] / 1000,
        "non_2xx_3xx": errors["status"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "socket_errors_detail": {k: v for k, v in errors.items() if k != "status"},
        "interrupted": interrupted,
    }


def _python(port: int, path: str, clients: int, duration: float, max_requests: int, stop) -> dict:
    """The same load from a child Python process (threads + http.client)."""
    cmd = [sys.executable, str(Path(__file__)), str(port), path, str(clients), str(duration),
           str(max_requests)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + duration + 30
    interrupted = False
    while proc.poll() is None:
        if (stop is not None and stop.is_set() and not interrupted) or time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"python load client failed: {err[-2000:]}")
    data = json.loads(out.strip().splitlines()[-1])
    data["interrupted"] = interrupted
    return data


def _client_main(port: int, path: str, clients: int, duration: float, max_requests: int) -> None:
    import http.client

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"non_2xx_3xx": 0, "socket_errors": 0, "sent": 0}
    deadline = time.monotonic() + duration
    # As wrk_report.lua: a new HTTP connection per request unless KAMW_HTTP_KEEPALIVE=1.
    headers = {} if os.environ.get("KAMW_HTTP_KEEPALIVE") == "1" else {"Connection": "close"}

    def client():
        conn = None
        while not stop.is_set() and time.monotonic() < deadline:
            with lock:
                if counts["sent"] >= max_requests:
                    return
                counts["sent"] += 1
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if not 200 <= resp.status < 400:
                        counts["non_2xx_3xx"] += 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception:  # noqa: BLE001 - a socket error is a figure
                with lock:
                    counts["socket_errors"] += 1
                if conn is not None:
                    conn.close()
                conn = None

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 15)
    seconds = time.monotonic() - started
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000 if latencies else 0.0

    print(json.dumps({
        "tool": "python", "requests": len(latencies), "duration_s": round(seconds, 3),
        "rps": len(latencies) / seconds if seconds else 0.0,
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        "non_2xx_3xx": counts["non_2xx_3xx"], "socket_errors": counts["socket_errors"],
        "socket_errors_detail": {},
    }))


if __name__ == "__main__":
    _client_main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
