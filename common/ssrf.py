"""Where a webhook may point: public addresses only, unless the operator allows a host.

A webhook URL comes from a client and is fetched from inside the network, so it could reach
what the client cannot: the cloud metadata service, Redis, the API itself. :func:`check_url`
refuses it unless every address its host resolves to is public (or the operator listed the
host in ``SDQ_WEBHOOK_ALLOWED_HOSTS``). The API checks at submit time (a 422, never a silent
drop); the webhook worker checks again before every attempt and then connects to the very
address it checked, so a DNS answer that changes in between (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Not public, whatever ipaddress.is_global says on this Python: private, shared (CGNAT),
# loopback, link-local (cloud metadata at 169.254.169.254), "this network", documentation,
# benchmarking, multicast and reserved ranges, and IPv6 forms that embed an IPv4 address
# (mapped, NAT64, 6to4, Teredo) and so could smuggle a private one.
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)

# A host made only of numbers in inet_aton's spellings (2130706433, 0x7f.1, 017700000001,
# 127.1): resolvers read these as IPv4 addresses, so they are refused unless canonical.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class UrlRefused(ValueError):
    """The URL may not be used for a webhook; the message says why (safe to show the client)."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, in order) and what to ask for."""

    url: str
    scheme: str
    host: str  # the name (IDNA, lower case) or the IP address, without brackets
    port: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Allowed:
    """The operator's allow-list: host names, and IP networks (a single address is a /32)."""

    names: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowed:
        names, networks = set(), []
        for entry in entries:
            entry = entry.strip().lower().rstrip(".")
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry)
        return cls(frozenset(names), tuple(networks))

    def admits(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and (
        ip.ipv4_mapped or ip.sixtofour or ip.teredo or ip.scope_id
    ):
        return False
    if any(ip.version == net.version and ip in net for net in BLOCKED_NETWORKS):
        return False
    return ip.is_global and not ip.is_multicast


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the host resolves to, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(
    url: str,
    *,
    allow_http: bool,
    allowed_hosts: Iterable[str] = (),
    resolver: Resolver = system_resolver,
) -> Target:
    """Resolve the URL's host once and check it; raise :class:`UrlRefused` with the reason."""
    scheme, host, port = _parse(url, allow_http)
    allowed = Allowed.parse(allowed_hosts)
    literal = _ip_literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = resolver(host, port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise UrlRefused(f"the host {host!r} does not resolve") from exc
        if not addresses:
            raise UrlRefused(f"the host {host!r} does not resolve")
    named_ok = host in allowed.names
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not (named_ok or allowed.admits(ip) or is_public(ip)):
            what = "is" if literal is not None else "resolves to"
            raise UrlRefused(
                f"the host {host!r} {what} a non-public address ({_kind(ip)}); only public "
                "receivers are allowed (an operator may allow one: SDQ_WEBHOOK_ALLOWED_HOSTS)"
            )
    return Target(url, scheme, host, port, tuple(addresses))


def _parse(url: str, allow_http: bool) -> tuple[str, str, int]:
    if any(c <= " " or c in "\x7f\\" for c in url):
        raise UrlRefused("the URL contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from exc
    schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme.lower() not in schemes:
        raise UrlRefused(
            "the URL must be https://"
            + (" or http://" if allow_http else "")
            + ("" if allow_http else " (http:// is allowed only with SDQ_WEBHOOK_ALLOW_HTTP)")
        )
    if "@" in parts.netloc:
        raise UrlRefused("the URL must not contain credentials (user@host)")
    raw_host = (parts.hostname or "").rstrip(".")
    if not raw_host:
        raise UrlRefused("the URL has no host")
    if "[" not in parts.netloc:
        try:
            raw_host = raw_host.encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise UrlRefused(f"the host {raw_host!r} is not a valid host name") from exc
    if port == 0:
        raise UrlRefused("port 0 is not a port one can connect to")
    scheme = parts.scheme.lower()
    return scheme, raw_host, port or (443 if scheme == "https" else 80)


def _ip_literal(host: str) -> IPAddress | None:
    """The host as an IP address if it is one; refuses IPv4 in any but the dotted-quad form."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if "%" in host:
        raise UrlRefused("IPv6 zone identifiers are not allowed")
    labels = host.split(".")
    if all(_NUMERIC_LABEL.match(label) for label in labels):
        raise UrlRefused(
            f"the host {host!r} is a numeric address in a non-standard form; write it as a "
            "dotted quad (which must be public)"
        )
    return None


def _kind(ip: IPAddress) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return "IPv4-mapped IPv6"
    for name in ("unspecified", "loopback", "link_local", "private", "multicast", "reserved"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    return "not globally routable"
