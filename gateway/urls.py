"""Outbound URLs an agent process asks the gateway to call (SSRF floor, docs/security.md).

A URL is refused when it is not http(s), or when its host is (or resolves to) a
loopback, link-local, private, multicast, reserved or unspecified address, unless
the operator allows private addresses (`server.allow_private_urls`). The check runs
when the agent is registered; the operator's own gateway.toml is trusted as written.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from gateway.errors import Forbidden

RESOLVE_SECONDS = 5.0


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


async def check_url(url: str, *, allow_private: bool, what: str) -> None:
    """Refuse (403 `url_not_allowed`) a URL the gateway must not call for an agent process."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise Forbidden(f"{what}: not a valid URL", code="url_not_allowed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise Forbidden(f"{what}: only http(s) URLs with a host", code="url_not_allowed")
    if parts.username or parts.password:
        raise Forbidden(f"{what}: credentials in URLs are not accepted", code="url_not_allowed")
    if allow_private:
        return
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_SECONDS):
                infos = await loop.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            raise Forbidden(f"{what}: host {host!r} does not resolve", code="url_not_allowed") from None
        addresses = [str(info[4][0]) for info in infos]
    if not addresses or any(_private(a) for a in addresses):
        raise Forbidden(
            f"{what}: {host!r} is a loopback, link-local or private address "
            "(the operator can allow these with server.allow_private_urls)",
            code="url_not_allowed",
        )
