from django.urls import path

from . import views

urlpatterns = [
    path("pid/<str:alias>/", views.pid),
    path("write/<str:alias>/", views.write),
    path("fail/<str:alias>/", views.fail),
    path("read/<str:alias>/", views.read),
    path("noop/", views.noop),
    path("stream/<str:alias>/", views.stream),
    path("async/<str:alias>/", views.async_count),
    path("status500/<str:alias>/", views.status500),
    path("stream_fail/<str:alias>/", views.stream_fail),
    path("astream_fail/<str:alias>/", views.astream_fail),
    path("leak_atomic/<str:alias>/", views.leak_atomic),
    path("autocommit_off/<str:alias>/", views.autocommit_off),
    path("autocommit_state/<str:alias>/", views.autocommit_state),
    path("raw_begin/<str:alias>/", views.raw_begin),
    path("dirty_session/<str:alias>/", views.dirty_session),
    path("session_state/<str:alias>/", views.session_state),
    path("failed_query/<str:alias>/", views.failed_query),
    path("pause/<str:alias>/", views.pause),
    path("apause/<str:alias>/", views.apause),
    path("pause_atomic/<str:alias>/", views.pause_atomic),
]
