"""The login rate limit, counted in the database so every worker sees one count.

Rates are written as DRF writes throttle rates: ``10/minute``, ``5/m``,
``100/hour``, ``3/s``, ``1000/day``. Counting uses fixed windows of the
period; a client over the limit is told how many seconds remain in the window.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import F

from accounts.models import LoginAttemptWindow

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Rate:
    limit: int
    period_s: int


def parse_rate(text: str) -> Rate:
    """Parse ``N/period``; raises ImproperlyConfigured naming PZLS_LOGIN_RATE when malformed."""
    try:
        count, period = text.strip().split("/", 1)
        limit = int(count)
        period_s = _PERIODS[period.strip().lower()[0]]
    except (ValueError, KeyError, IndexError):
        raise ImproperlyConfigured(
            f"PZLS_LOGIN_RATE must look like 10/minute (N/second|minute|hour|day), not {text!r}"
        ) from None
    if limit < 1:
        raise ImproperlyConfigured("PZLS_LOGIN_RATE must allow at least 1 attempt")
    return Rate(limit=limit, period_s=period_s)


def hit(key: str, rate: Rate, *, now: float | None = None) -> int | None:
    """Count one attempt for ``key``. Returns None when allowed, else the seconds to wait."""
    now = time.time() if now is None else now
    window = int(now // rate.period_s)
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    with transaction.atomic():
        updated = LoginAttemptWindow.objects.filter(key=digest, window=window).update(attempts=F("attempts") + 1)
        if not updated:
            # First attempt of this key in this window: a good moment to drop old windows.
            LoginAttemptWindow.objects.filter(window__lt=window - 1).delete()
            try:
                with transaction.atomic():
                    LoginAttemptWindow.objects.create(key=digest, window=window, attempts=1)
            except IntegrityError:
                LoginAttemptWindow.objects.filter(key=digest, window=window).update(attempts=F("attempts") + 1)
        attempts = LoginAttemptWindow.objects.filter(key=digest, window=window).values_list("attempts", flat=True).get()
    if attempts > rate.limit:
        return max(1, int((window + 1) * rate.period_s - now + 0.999))
    return None
