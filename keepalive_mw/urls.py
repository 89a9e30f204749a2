"""URLconf to include for the staff-only JSON view of a worker's numbers."""

from django.urls import path

from . import views

app_name = "keepalive_mw"
urlpatterns = [path("", views.stats, name="stats")]
