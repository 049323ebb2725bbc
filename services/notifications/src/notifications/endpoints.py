"""Which webhook / FHIR endpoints a subscription may name (server-side request forgery guard).

An organization token can register an endpoint URL, and the service then POSTs to it and
records the status codes (visible through ``/evidence``). Without a guard a token could make
the service probe the internal network or a cloud metadata address. The policy in production:

* ``https`` only (alerts carry PHI);
* the host must resolve, and every address it resolves to must be a public unicast address
  (no loopback, private, link-local incl. 169.254.169.254, carrier-grade NAT, multicast,
  reserved or unspecified addresses);
* no credentials in the URL.

``WEBHOOK_ALLOW_PRIVATE_NETWORKS=true`` lifts the address and scheme rules for development,
the tests and the demo, whose receivers listen on 127.0.0.1. The check runs when the
subscription is created and again before each delivery attempt (a name that later resolves
to a private address is refused then, as ``endpoint_forbidden``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["EndpointForbidden", "check_endpoint", "forbidden_address"]


class EndpointForbidden(ValueError):
    """The URL may not be used as a delivery endpoint; ``str()`` says why (no secrets, no PHI)."""


def forbidden_address(address: str) -> bool:
    """True when ``address`` (an IP literal) is not a public unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


async def check_endpoint(url: str, *, allow_private: bool) -> None:
    """Raise :class:`EndpointForbidden` unless ``url`` is an acceptable delivery endpoint."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise EndpointForbidden("endpoint_url must be an http(s) URL")
    if parts.username or parts.password:
        raise EndpointForbidden("endpoint_url must not carry credentials")
    host = parts.hostname
    if not host:
        raise EndpointForbidden("endpoint_url has no host")
    if allow_private:
        return
    if parts.scheme != "https":
        raise EndpointForbidden("endpoint_url must use https")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointForbidden("endpoint_url host does not resolve") from exc
    if not infos or any(forbidden_address(str(info[4][0])) for info in infos):
        raise EndpointForbidden("endpoint_url resolves to a loopback, private, link-local or reserved address")
