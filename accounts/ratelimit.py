"""The login rate limits, counted in the database so every worker sees one count.

Two counters: per client address and username (settings.PZLS_LOGIN_RATE,
logins), and per client address alone (settings.PZLS_AUTH_RATE_PER_ADDRESS,
logins and registrations, under keys ``address_key`` gives, which never look
like the first kind). Each rate is an ``env.Rate`` that pzls_site.env parsed
from the environment at start-up. Attempts are counted per window of the
period, and a sliding window is estimated from the current and previous
counts (the previous one weighted by how much of it still lies within one
period of now), so a burst cannot double its allowance at a window boundary.
Attempts made while refused still count, so hammering keeps a client out.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time

from django.db import IntegrityError, transaction
from django.db.models import F

from accounts.models import LoginAttemptWindow
from pzls_site.env import Rate


def address_key(client_ip: str) -> str:
    """The per-address counter's key: an IPv4 address as it is, an IPv6 address by its /64 network.

    One IPv6 subscriber is commonly given a whole /64, so counting its
    addresses one by one would give a single client 2^64 allowances.
    """
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return f"address|{client_ip}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            return f"address|{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"address|{address}"


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
