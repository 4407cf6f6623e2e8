"""Settings for the test suite: the project's own, with a throwaway data directory."""

import os
import tempfile

os.environ["PZLS_DATA_DIR"] = tempfile.mkdtemp(prefix="pzls-test-")

from pzls_site.settings import *  # noqa: E402,F401,F403

# Fast hashing keeps the suite quick; scrypt itself is tested explicitly.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *PASSWORD_HASHERS]  # noqa: F405

# Unit tests never run collectstatic: plain static storage (no manifest needed
# to render admin pages) and no scan of STATIC_ROOT, which an end-to-end
# server may be rewriting at that moment.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_AUTOREFRESH = True
