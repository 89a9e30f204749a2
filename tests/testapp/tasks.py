"""Tasks of Django's tasks framework (django.tasks, or the django_tasks backport)."""

from __future__ import annotations

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the backport
    from django_tasks import task

from .models import Item


@task()
def insert_item(alias: str, name: str, fail: bool = False) -> None:
    Item.objects.using(alias).create(name=name)
    if fail:
        raise RuntimeError("the task fails after its write")
