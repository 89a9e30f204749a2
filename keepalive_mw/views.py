"""Opt-in JSON view of this worker process's numbers, for staff only.

Include it to opt in: ``path("keepalive/", include("keepalive_mw.urls"))``. Anonymous users
get 404 (nothing to see here), authenticated non-staff users 403.
"""

from __future__ import annotations

import os

from django.http import Http404, HttpRequest, HttpResponseForbidden, JsonResponse

from . import attribution
from .stats import get_stats


def stats(request: HttpRequest) -> JsonResponse | HttpResponseForbidden:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        raise Http404
    if not user.is_staff:
        return HttpResponseForbidden()
    return JsonResponse({
        "schema_version": 1,
        "process": {"host": attribution.HOST, "pid": os.getpid()},
        "aliases": get_stats(),
    })
