"""Which hosts the service may fetch a scene from: never its own machine or network unless the
operator says so.

A client's ``href`` makes the server send requests. Left open, that reaches what only the server can
reach (its own ``/metrics``, a database on the LAN, the cloud metadata address that hands out
credentials) and tells a port scanner which ports are open. So the href's host is resolved and
refused, before any request is made, when any of its addresses is not a public unicast address
(loopback, private, link-local, shared, multicast, reserved, unspecified; the metadata address
169.254.169.254 is link-local). The answer does not depend on whether anything listens there.
``--allow-private-hrefs`` lifts the rule, ``--allow-href-host NAME`` lifts it for one host.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class HrefRefused(Exception):
    """The href's host is not one the server fetches from; the message is one line for the client."""


@dataclass(frozen=True)
class HrefPolicy:
    allow_private: bool = False
    allow_hosts: frozenset[str] = field(default_factory=frozenset)  # lower-case host names or addresses

    @classmethod
    def of(cls, settings) -> HrefPolicy:
        """The policy of ``hbdnet serve``'s settings (``allow_private_hrefs``, ``allow_href_hosts``)."""
        return cls(settings.allow_private_hrefs, frozenset(h.strip("[]").lower() for h in settings.allow_href_hosts))


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _host(href: str) -> tuple[str, int]:
    """The host GDAL connects to for ``href``, and its port: an s3:// href goes to AWS_S3_ENDPOINT
    when one is set (else to AWS, a public host)."""
    parts = urlsplit(href)
    if parts.scheme.lower() == "s3":
        endpoint = os.environ.get("AWS_S3_ENDPOINT")
        if not endpoint:
            return "s3.amazonaws.com", 443
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise HrefRefused("the href's port is not a number from 0 to 65535") from None
    return (parts.hostname or "").lower(), port


def check_href_host(href: str, policy: HrefPolicy) -> None:
    """Raise ``HrefRefused`` unless ``policy`` lets the server fetch ``href``: its host is allowed by
    name, or every address it resolves to is public. Resolves the name (DNS), sends nothing to it."""
    host, port = _host(href)
    allowed_addresses(host, port, policy)


def allowed_addresses(host: str, port: int, policy: HrefPolicy) -> list[str]:
    """The addresses of ``host`` the server may connect to (``HrefRefused`` when it may not): connecting
    to one of these, not to a second lookup of the name, is what keeps a name that resolves to a public
    address now and to a private one a moment later (DNS rebinding) out."""
    host = host.strip("[]").lower()
    if not host:
        raise HrefRefused("the href has no host")
    try:
        addresses = list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))
    except (socket.gaierror, UnicodeError):
        raise HrefRefused(f"the href's host {host!r} does not resolve") from None
    if policy.allow_private or host in policy.allow_hosts:
        return addresses
    if not addresses or not all(_public(a) for a in addresses):
        raise HrefRefused(f"the href's host {host!r} is not a public address: the server does not fetch from "
                          "its own machine or network (its operator may allow hosts with --allow-href-host)")
    return addresses
