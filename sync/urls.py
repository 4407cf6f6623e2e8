"""Sync API URLs, and the admin API's users list (it shows each user's repository)."""

from django.urls import re_path

from sync import views

urlpatterns = [
    re_path(r"^sync/?$", views.SyncView.as_view()),
    re_path(r"^sync/changes/?$", views.ChangesView.as_view()),
    re_path(r"^sync/status/?$", views.StatusView.as_view()),
    re_path(r"^sync/ops/?$", views.OpsView.as_view()),
    re_path(r"^sync/cursor/?$", views.CursorView.as_view()),
    re_path(r"^sync/stores/?$", views.StoresView.as_view()),
    re_path(r"^sync/records/(?P<store>[^/]+)/(?P<record_id>[\s\S]+)$", views.RecordView.as_view()),
    re_path(r"^admin/users/?$", views.AdminUsersView.as_view()),
]
