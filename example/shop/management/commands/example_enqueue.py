"""``python -m django example_enqueue SPEC... [--count N]``: enqueue example tasks of Django's
tasks framework (example/shop/jobs.py; needs EXAMPLE_TASKS=1).

A SPEC is ``KIND`` or ``KIND:LABEL`` (the row label of insert tasks); the sequence of specs
is enqueued ``--count`` times, so ``insert:ok insert:ok insert_then_fail:bad --count 50``
interleaves 100 inserts and 50 failing inserts.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

KINDS = ("queries", "insert", "insert_then_fail")


class Command(BaseCommand):
    help = "Enqueue example tasks of Django's tasks framework (EXAMPLE_TASKS=1)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("specs", nargs="+", metavar="KIND[:LABEL]",
                            help=f"KIND is one of {', '.join(KINDS)}")
        parser.add_argument("--count", type=int, default=1,
                            help="times to enqueue the sequence (default 1)")

    def handle(self, *, specs: list[str], count: int, **options: Any) -> None:
        from django.conf import settings

        if "django_tasks_db" not in settings.INSTALLED_APPS:
            raise CommandError("example tasks need EXAMPLE_TASKS=1")
        if count < 1:
            raise CommandError("--count must be at least 1")
        from example.shop import jobs

        calls = []
        for spec in specs:
            kind, _, label = spec.partition(":")
            if kind not in KINDS:
                raise CommandError(f"unknown task kind {kind!r}; choose from {', '.join(KINDS)}")
            calls.append((getattr(jobs, kind), () if kind == "queries" else (label or "task",)))
        for _ in range(count):
            for task, args in calls:
                task.enqueue(*args)
        self.stdout.write(f"enqueued {count * len(calls)} tasks")
