"""Root URLs: each app's API under /api/, Django's admin site under /admin/."""

from django.contrib import admin
from django.urls import include, path, re_path

from pzls_site import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("accounts.urls")),
    path("api/", include("sync.urls")),
    path("api/", include("resolve.urls")),
    path("api/", include("query.urls")),
    re_path(r"^api(/.*)?$", views.api_not_found),
]

handler400 = "pzls_site.views.handler400"
handler403 = "pzls_site.views.handler403"
handler404 = "pzls_site.views.handler404"
handler500 = "pzls_site.views.handler500"
