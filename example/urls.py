from django.urls import path

from example import views

urlpatterns = [
    path("", views.index),
    path("health/", views.health),
    path("pid/", views.pid),
    path("write/", views.write),
    path("fail/", views.fail),
    path("read/", views.read),
    path("stream/", views.stream),
    path("async/", views.async_view),
    path("slow/", views.slow),
    path("slow-sync/", views.slow_sync),
    path("sleep/", views.sleep),
    path("stream-fail/", views.stream_fail),
    path("tenant/", views.tenant),
    path("tenant/set/", views.tenant_set),
]
