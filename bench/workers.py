"""Benchmark of Celery workers: the example's ``queries`` task (three small queries, like the
``/`` view) run by a prefork worker (concurrency 2, a private Redis as broker and result
backend, Celery's Django fixup active) per variant, against its own database of the bench's
throwaway scram-sha-256 cluster.

Figures per variant: tasks/s (first task sent to last result read, the worker already
answering), new server sessions per task (pg_stat_database.sessions, the worker's start
included), server sessions at peak (pg_stat_activity sampled every 50 ms), failed tasks, and
tasks that reached the database, counted by the server (pg_stat_statements).
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import time

# name -> (label, example env overrides)
CELERY_VARIANTS = {
    "default": ("Django default (CONN_MAX_AGE=0)", {"EXAMPLE_VARIANT": "default"}),
    "conn_max_age": ("CONN_MAX_AGE=600", {"EXAMPLE_VARIANT": "conn_max_age"}),
    "conn_max_age_reuse": ("CONN_MAX_AGE=600 + CELERY_DB_REUSE_MAX=1000",
                           {"EXAMPLE_VARIANT": "conn_max_age",
                            "EXAMPLE_CELERY_DB_REUSE_MAX": "1000"}),
    "keepalive": ("keepalive_mw (defaults, health checks on)", {"EXAMPLE_VARIANT": "keepalive"}),
}
REFERENCE = "keepalive"
CONCURRENCY = 2
TASK = "queries"


def missing() -> str | None:
    """Why the Celery benchmark cannot run here, or None."""
    absent = [m for m in ("celery", "redis") if importlib.util.find_spec(m) is None]
    if absent:
        return f"missing Python packages {', '.join(absent)} (python -m pip install -e '.[test]')"
    from tests.integration.workers import REDIS_SERVER

    if not shutil.which(REDIS_SERVER):
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    return None


def _db(variant: str) -> str:
    return f"bench_celery_{variant}"


class CeleryBench:
    """The Celery cells of a benchmark run: one Redis for all, one database per variant,
    created, seeded and baselined through the driver's :class:`bench.run.Bench`."""

    def __init__(self, bench, variants: list, tasks: int):
        self.bench = bench
        self.variants = variants
        self.tasks = tasks
        self.redis = None
        self.runs: list = []
        self.failures: list = []

    def env(self, variant: str) -> dict:
        return self.bench.example_env(_db(variant), f"kamw-bench-celery-{variant}",
                                      CELERY_VARIANTS[variant][1], self.bench.cluster.port)

    def start(self) -> None:
        from tests.integration.workers import RedisServer

        self.redis = RedisServer().start()
        for variant in self.variants:
            self.bench.prepare_database(_db(variant), self.env(variant))

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            shutil.rmtree(self.redis._logdir, ignore_errors=True)

    def run_cell(self, variant: str, round_no: int) -> dict:
        from bench import pg
        from tests.integration.workers import CeleryWorker, states

        db = _db(variant)
        cluster = self.bench.cluster
        t_start = time.monotonic()
        sampler = pg.ActivitySampler(cluster, db).start()
        worker = CeleryWorker(self.env(variant), self.redis, concurrency=CONCURRENCY)
        try:
            worker.start()
            started = time.monotonic()
            results = worker.run(TASK, self.tasks, timeout=60 + self.tasks / 5)
            elapsed = time.monotonic() - started
            sampler.stop()
        finally:
            sampler.close()
            worker.stop()
        stderr = worker.stderr_path.read_text(errors="replace")
        shutil.rmtree(worker._logdir, ignore_errors=True)
        settled = pg.settled_counters(cluster, db)
        before = self.bench.baseline[db]
        self.bench.baseline[db] = settled
        sessions = settled["sessions"] - before["sessions"]
        succeeded = states(results).get("SUCCESS", 0)
        return {
            "variant": variant, "round": round_no, "tasks": self.tasks,
            "concurrency": CONCURRENCY, "duration_s": round(elapsed, 3),
            "tasks_per_s": self.tasks / elapsed if elapsed else 0.0,
            "failed": self.tasks - succeeded,
            "sessions": sessions, "sessions_per_task": sessions / self.tasks,
            "served": settled["served"] - before["served"],
            "conns_peak": sampler.peak,
            "worker_tracebacks": stderr.count("Traceback (most recent call last)"),
            "wall_s": round(time.monotonic() - t_start, 2),
        }


def aggregate(runs: list) -> list:
    """One row per variant: medians over rounds (tasks/s), totals (tasks, failures,
    sessions), maxima (peak sessions); tasks/s relative to keepalive_mw."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        cell = [r for r in runs if r["variant"] == variant]
        rates = [r["tasks_per_s"] for r in cell]
        tasks = sum(r["tasks"] for r in cell)
        rows.append({
            "variant": variant, "rounds": len(cell), "tasks": tasks,
            "tasks_per_s": statistics.median(rates), "tasks_per_s_min": min(rates),
            "tasks_per_s_max": max(rates), "failed": sum(r["failed"] for r in cell),
            "sessions_per_task": sum(r["sessions"] for r in cell) / tasks if tasks else None,
            "served": sum(r["served"] for r in cell),
            "conns_peak": max(r["conns_peak"] for r in cell),
            "concurrency": cell[0]["concurrency"],
        })
    ref = next((r for r in rows if r["variant"] == REFERENCE), None)
    for row in rows:
        row["vs_keepalive"] = (row["tasks_per_s"] / ref["tasks_per_s"]
                               if ref and ref["tasks_per_s"] else None)
    return rows


def targets(rows: list) -> list:
    """(description, value text, met) for the Celery figures the benchmark is meant to show."""
    out = []
    ka = next((r for r in rows if r["variant"] == REFERENCE), None)
    plain = next((r for r in rows if r["variant"] == "default"), None)
    if ka and plain and plain["tasks_per_s"]:
        value = ka["tasks_per_s"] / plain["tasks_per_s"]
        out.append(("Celery: keepalive_mw ≥ 2.5× Django default's tasks/s",
                    f"{value:.2f}× ({ka['tasks_per_s']:.0f} vs {plain['tasks_per_s']:.0f} tasks/s)",
                    value >= 2.5))
    if ka and ka["sessions_per_task"] is not None:
        out.append(("Celery: keepalive_mw ≤ 0.01 new sessions per task",
                    f"{ka['sessions_per_task']:.4f}", ka["sessions_per_task"] <= 0.01))
        out.append(("Celery: keepalive_mw 0 failed tasks", str(ka["failed"]), ka["failed"] == 0))
    return out


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(celery: dict) -> list:
    """Lines of the report's Celery section."""
    cfg = celery["config"]
    lines = [
        "### Celery worker",
        "",
        f"`{TASK}` task (three small queries), {cfg['tasks']} tasks per cell, prefork "
        f"concurrency {CONCURRENCY}, Redis broker and result backend, Celery's Django fixup "
        f"active; {cfg['rounds']} interleaved round(s). New sessions include the worker's start.",
        "",
        "| variant | tasks/s | vs keepalive_mw | new sessions/task | server conns peak | "
        "failed tasks | tasks seen by the server |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in celery["summary"]:
        label = CELERY_VARIANTS[row["variant"]][0]
        if row["variant"] == REFERENCE:
            label = f"**{label}**"
        lines.append(f"| {label} | {row['tasks_per_s']:.0f} | {_fmt(row['vs_keepalive'], '.2f')}× "
                     f"| {_fmt(row['sessions_per_task'], '.3f')} | {row['conns_peak']} | "
                     f"{row['failed']} | {row['served']} / {row['tasks']} |")
    if celery.get("failures"):
        lines.append(f"**{len(celery['failures'])} Celery cell run(s) failed**: " + "; ".join(
            f"{f['variant']} round {f['round']}: {f['error'][:120]}" for f in celery["failures"]))
    return lines + [""]


SHORT_LABELS = {"default": "Django default", "conn_max_age": "CONN_MAX_AGE=600",
                "conn_max_age_reuse": "CONN_MAX_AGE=600\n+ CELERY_DB_REUSE_MAX", "keepalive": "keepalive_mw"}
COLORS = {"default": "#9e9e9e", "conn_max_age": "#64b5f6", "conn_max_age_reuse": "#1565c0",
          "keepalive": "#2e7d32"}


def draw(ax_rate, ax_sessions, rows: list) -> None:
    """Bars of tasks/s and of new sessions per task, one per variant."""
    names = [row["variant"] for row in rows]
    xs = range(len(rows))
    colors = [COLORS.get(name) for name in names]
    rates = [row["tasks_per_s"] for row in rows]
    per_task = [row["sessions_per_task"] or 0 for row in rows]
    ax_rate.bar(xs, rates, color=colors)
    ax_sessions.bar(xs, per_task, color=colors)
    for x, rate, sessions in zip(xs, rates, per_task):
        ax_rate.text(x, rate, f"{rate:.0f}", ha="center", va="bottom", fontsize=7)
        ax_sessions.text(x, sessions, f"{sessions:.3f}", ha="center", va="bottom", fontsize=7)
    labels = [SHORT_LABELS.get(name, name) for name in names]
    for ax in (ax_rate, ax_sessions):
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=6.5)
    ax_rate.set_title(f"Celery prefork ×{CONCURRENCY}: tasks/s (higher is better)", fontsize=9)
    ax_sessions.set_title("Celery: new server sessions per task (lower is better)", fontsize=9)


def run_round(celery: CeleryBench, round_no: int, log) -> None:
    """One cell per variant, in order; a failed cell is recorded and the others go on."""
    import contextlib

    from bench import pg

    for variant in celery.variants:
        try:
            run = celery.run_cell(variant, round_no)
        except Exception as exc:  # noqa: BLE001 - reported, the other cells go on
            celery.failures.append({"variant": variant, "round": round_no,
                                    "error": f"{type(exc).__name__}: {exc}"[:3000]})
            log(f"round {round_no} Celery prefork×{CONCURRENCY} {variant:20} "
                f"FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            with contextlib.suppress(Exception):  # the next run's counters start here
                celery.bench.baseline[_db(variant)] = pg.settled_counters(celery.bench.cluster,
                                                                          _db(variant))
            continue
        celery.runs.append(run)
        log(f"round {round_no} Celery prefork×{CONCURRENCY} {variant:20} "
            f"{run['tasks_per_s']:7.0f} tasks/s  failed {run['failed']:4}  "
            f"conns peak {run['conns_peak']:3}  sess/task {run['sessions_per_task']:.3f}  "
            f"({run['wall_s']} s)")


def results(celery: CeleryBench, rounds: int) -> dict:
    """The Celery part of the benchmark's JSON."""
    return {"config": {"tasks": celery.tasks, "rounds": rounds, "concurrency": CONCURRENCY,
                       "task": TASK, "variants": celery.variants,
                       "variants_detail": {v: {"label": CELERY_VARIANTS[v][0],
                                               "env": CELERY_VARIANTS[v][1]}
                                           for v in celery.variants}},
            "summary": aggregate(celery.runs), "runs": celery.runs, "failures": celery.failures}
