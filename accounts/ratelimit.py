"""The login rate limit, counted in the database so every worker sees one count.

Rates are written as DRF writes throttle rates: ``10/minute``, ``5/m``,
``100/hour``, ``3/s``, ``1000/day``. Attempts are counted per window of the
period, and a sliding window is estimated from the current and previous
counts (the previous one weighted by how much of it still lies within one
period of now), so a burst cannot double its allowance at a window boundary.
Attempts made while refused still count, so hammering keeps a client out.
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


def _estimate(previous: int, current: int, elapsed_fraction: float) -> float:
    return previous * (1.0 - elapsed_fraction) + current


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
        counts = dict(
            LoginAttemptWindow.objects.filter(key=digest, window__in=[window - 1, window]).values_list(
                "window", "attempts"
            )
        )
    previous, current = counts.get(window - 1, 0), counts.get(window, 0)
    elapsed = (now - window * rate.period_s) / rate.period_s
    if _estimate(previous, current, elapsed) <= rate.limit:
        return None
    # The first whole second from now at which one more attempt would be allowed.
    for wait in range(1, 2 * rate.period_s + 1):
        later = now + wait
        if int(later // rate.period_s) == window:
            allowed = _estimate(previous, current + 1, (later - window * rate.period_s) / rate.period_s) <= rate.limit
        else:
            next_elapsed = (later - (window + 1) * rate.period_s) / rate.period_s
            allowed = _estimate(current, 1, next_elapsed) <= rate.limit
        if allowed:
            return wait
    return 2 * rate.period_s
