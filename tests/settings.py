"""Settings for the test suite: the project's own, with a throwaway data directory."""

import os
import tempfile

os.environ["PZLS_DATA_DIR"] = tempfile.mkdtemp(prefix="pzls-test-")

from pzls_site.settings import *  # noqa: E402,F401,F403

# Fast hashing keeps the suite quick; scrypt itself is tested explicitly.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *PASSWORD_HASHERS]  # noqa: F405
