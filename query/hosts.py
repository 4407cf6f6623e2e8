"""Where a query may connect: name resolution, the host allow-list, the server's own database.

Imports nothing from Django. The host in a connection string is resolved
once, here; the allow-list and the own-database check look at those
addresses, and the runner connects to one of exactly those addresses. A name
that resolves differently a moment later (DNS rebinding) therefore cannot
lead the connection somewhere the checks did not see.

Allow-list patterns (``PZLS_QUERY_ALLOWED_HOSTS``), each optionally followed
by ``:port``:

- ``*``: any host;
- a host name, with ``*`` wildcards (``db.example.com``, ``*.corp.example``),
  compared with the name written in the connection string;
- an IP address or network (``10.1.2.3``, ``10.0.0.0/8``, ``[fd00::/8]:5432``),
  compared with the addresses the name resolves to.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import queue
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostError(ValueError):
    """A host could not be resolved, or a pattern is malformed; the message says which."""


def canonical(address: str) -> Address:
    """An address as an ``ipaddress`` object, IPv4-mapped IPv6 (``::ffff:1.2.3.4``) unwrapped."""
    parsed = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


@dataclass(frozen=True)
class HostPattern:
    """One allow-list entry: a name pattern or a network, and an optional port."""

    text: str
    name: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None

    def matches(self, *, name: str, port: int, address: Address) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address in self.network
        assert self.name is not None
        return fnmatch.fnmatchcase(name, self.name)


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise HostError(f"Host pattern {text!r} has an unclosed '['")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise HostError(f"Host pattern {text!r} is malformed")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        return text, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HostError(f"Host pattern {text!r} has an invalid port")
    return host, int(port_text)


def parse_pattern(text: str) -> HostPattern:
    """Parse one allow-list entry; ``HostError`` when it is malformed."""
    text = text.strip()
    if not text:
        raise HostError("Host pattern is empty")
    host, port = _split_port(text)
    host = host.strip().lower().rstrip(".")
    if not host:
        raise HostError(f"Host pattern {text!r} has no host")
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return HostPattern(text=text, name=host, network=None, port=port)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128 and network[0].ipv4_mapped:
        network = ipaddress.ip_network(network[0].ipv4_mapped)
    return HostPattern(text=text, name=None, network=network, port=port)


def parse_patterns(items: Iterable[str]) -> list[HostPattern]:
    return [parse_pattern(item) for item in items]


def allowed_addresses(*, name: str, port: int, addresses: Sequence[str], patterns: Sequence[HostPattern]) -> list[str]:
    """Those of ``addresses`` that some pattern allows, in their order."""
    return [
        address
        for address in addresses
        if any(pattern.matches(name=name, port=port, address=canonical(address)) for pattern in patterns)
    ]


def resolve(host: str, port: int, *, timeout: float) -> list[str]:
    """The IP addresses ``host`` resolves to (a literal address resolves to itself), in the resolver's order.

    getaddrinfo has no timeout of its own and can block for many seconds on a
    dead DNS server, so it runs in a helper thread that is abandoned after
    ``timeout`` seconds.
    """
    try:
        return [str(canonical(host))]
    except ValueError:
        pass
    answers: queue.Queue[list[str] | Exception] = queue.Queue(maxsize=1)

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            answers.put([str(info[4][0]) for info in infos])  # an IP address: str for SOCK_STREAM
        except Exception as exc:  # handed to the waiting thread
            answers.put(exc)

    threading.Thread(target=lookup, name="pzls-query-resolve", daemon=True).start()
    try:
        answer = answers.get(timeout=timeout)
    except queue.Empty:
        raise HostError(f"Could not resolve host {host!r} within {timeout:g} s") from None
    if isinstance(answer, Exception):
        raise HostError(f"Could not resolve host {host!r}") from None
    unique: list[str] = []
    for address in answer:
        text = str(canonical(address))
        if text not in unique:
            unique.append(text)
    if not unique:
        raise HostError(f"Could not resolve host {host!r}")
    return unique


@lru_cache(maxsize=1)
def _machine_addresses() -> frozenset[Address]:
    """Addresses that name this machine; what the resolver knows of them."""
    found: set[Address] = set()
    for name in {socket.gethostname(), socket.getfqdn()}:
        try:
            for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
                found.add(canonical(str(info[4][0])))
        except (OSError, ValueError):
            continue
    return frozenset(found)


def is_local(address: Address) -> bool:
    """Does a connection to ``address`` reach this machine?

    Every 127.0.0.0/8 and ::1 address is loopback, and 0.0.0.0 / :: connect to
    this machine too; so do the addresses of the machine's own name.
    """
    return address.is_loopback or address.is_unspecified or address in _machine_addresses()


@dataclass(frozen=True)
class OwnDatabase:
    """The database PZLS itself stores its data in, as far as the network sees it.

    ``database`` is None for MySQL/MariaDB, where one login reaches every
    database of the server (``SELECT * FROM other_db.t``), so the whole server
    is off limits; on PostgreSQL a session cannot leave its database, so only
    that database is.
    """

    port: int
    database: str | None
    addresses: frozenset[Address]
    local: bool

    @classmethod
    def from_settings(cls, *, engine: str, host: str, port: int, database: str | None, timeout: float) -> OwnDatabase:
        # No host (or a socket path) means a Unix socket: this machine.
        if not host or host.startswith("/") or host.lower() == "localhost":
            return cls(port=port, database=database, addresses=frozenset(), local=True)
        try:
            addresses = frozenset(canonical(a) for a in resolve(host, port, timeout=timeout))
        except HostError:
            addresses = frozenset()
        return cls(port=port, database=database, addresses=addresses, local=any(is_local(a) for a in addresses))

    def is_target(self, *, port: int, database: str, addresses: Sequence[str]) -> bool:
        """Would a connection to ``port``/``database`` at any of ``addresses`` reach this database?"""
        if port != self.port:
            return False
        if self.database is not None and database != self.database:
            return False
        for text in addresses:
            address = canonical(text)
            if address in self.addresses or (self.local and is_local(address)):
                return True
        return False
