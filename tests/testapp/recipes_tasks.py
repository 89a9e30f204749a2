"""The jobs of the recipes' tests: a write on ``pg_manual`` (AUTOCOMMIT off), maybe a failure."""

from django.db import connections

from .models import Item

# pg_backend_pid() of the session each job used, in the order the jobs ran.
PIDS: list[int] = []


def insert(name, fail=False):
    Item.objects.using("pg_manual").create(name=name)
    with connections["pg_manual"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        PIDS.append(cursor.fetchone()[0])
    if fail:
        raise RuntimeError("the job fails after its write")


def no_database():
    """A job that uses no database."""
