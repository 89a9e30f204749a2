"""The opt-in stats view shows a worker's numbers to staff, and nothing to anyone else."""

from __future__ import annotations

import json
import os

import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import Http404
from django.test import RequestFactory
from django.urls import include, path, resolve

from keepalive_mw import views
from tests.helpers import in_thread, wsgi_get


class User:
    is_authenticated = True

    def __init__(self, is_staff):
        self.is_staff = is_staff


def get(user):
    request = RequestFactory().get("/keepalive/")
    if user is not None:
        request.user = user
    return views.stats(request)


def test_anonymous_and_userless_requests_get_404():
    with pytest.raises(Http404):
        get(AnonymousUser())
    with pytest.raises(Http404):
        get(None)  # no auth middleware at all


def test_non_staff_get_403():
    assert get(User(is_staff=False)).status_code == 403


@pytest.mark.django_db(transaction=True, databases=["default"])
def test_staff_see_this_process_counters():
    for _ in range(3):
        in_thread(wsgi_get, "/pid/default/")
    response = get(User(is_staff=True))
    body = json.loads(response.content)
    assert response.status_code == 200 and body["process"]["pid"] == os.getpid()
    assert body["aliases"]["default"]["connections_reused"] == 2


def test_urlconf_can_be_included(settings):
    settings.ROOT_URLCONF = __name__
    assert resolve("/keepalive/").func is views.stats


urlpatterns = [path("keepalive/", include("keepalive_mw.urls"))]
