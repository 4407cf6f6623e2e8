"""gunicorn settings for `make run`, from the environment.

PORT (default 3456), PZLS_BIND_HOST (default 0.0.0.0), PZLS_WORKERS (default
2 x cores + 1, at most 8), PZLS_WORKER_TIMEOUT_S (default 120).
"""

import multiprocessing
import os

bind = f"{os.environ.get('PZLS_BIND_HOST', '0.0.0.0')}:{int(os.environ.get('PORT', '3456'))}"
workers = int(os.environ.get("PZLS_WORKERS") or min(2 * multiprocessing.cpu_count() + 1, 8))
worker_class = "sync"
# Load Django once in the master: the workers share its memory pages.
preload_app = True
timeout = int(os.environ.get("PZLS_WORKER_TIMEOUT_S", "120"))
graceful_timeout = 30
keepalive = 5
# Header limits: a line of 8 KiB and 100 headers are plenty for any client.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
# No runtime control socket: one fixed path would be shared by every server on the machine.
control_socket_disable = True
accesslog = os.environ.get("PZLS_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("PZLS_LOG_LEVEL", "info").lower()
