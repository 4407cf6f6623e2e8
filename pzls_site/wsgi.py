"""WSGI entry point for gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pzls_site.settings")
application = get_wsgi_application()

# Import every view now: gunicorn preloads this module in its master process,
# so the workers share these modules' memory instead of each importing them.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018 - the property imports the URLconf and every view: that is the point
