"""Root URLs: each app's API under /api/, the server's health at /api/auth/health
(where the protocol puts it), the OpenAPI description at /api/schema (browsable
at /api/docs), Django's admin site under /admin/."""

from django.contrib import admin
from django.urls import include, path, re_path

from pzls_site import schema, views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("accounts.urls")),
    path("api/", include("sync.urls")),
    path("api/", include("resolve.urls")),
    path("api/", include("query.urls")),
    # Before the catch-all, which answers 404 for every other /api/ URL.
    re_path(r"^api/auth/health/?$", views.HealthView.as_view()),
    re_path(r"^api/schema/?$", schema.SchemaView.as_view(), name="api-schema"),
    re_path(r"^api/docs/?$", schema.DocsView.as_view(), name="api-docs"),
    re_path(r"^api(/.*)?$", views.api_not_found),
]

handler400 = "pzls_site.views.handler400"
handler403 = "pzls_site.views.handler403"
handler404 = "pzls_site.views.handler404"
handler500 = "pzls_site.views.handler500"
