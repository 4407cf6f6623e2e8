"""gunicorn settings for `make run`, from the environment as pzls_site.env checks it.

PORT (default 3456), PZLS_BIND_HOST (default 0.0.0.0), PZLS_WORKERS (default
2 x cores + 1, at most 8), PZLS_WORKER_TIMEOUT_S (default 120),
PZLS_ACCESS_LOG, PZLS_LOG_LEVEL. A refused value stops gunicorn here, with
one line naming it and exit status 2, before it binds the port.
"""

from pzls_site import env

_ENV = env.current_or_exit()

bind = _ENV.bind
workers = _ENV.workers
worker_class = "sync"
# Load Django once in the master: the workers share its memory pages.
preload_app = True
timeout = _ENV.worker_timeout_s
graceful_timeout = 30
keepalive = 5
# Header limits: a line of 8 KiB and 100 headers are plenty for any client.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
# No runtime control socket: one fixed path would be shared by every server on the machine.
control_socket_disable = True
accesslog = _ENV.access_log
errorlog = "-"
loglevel = _ENV.log_level
