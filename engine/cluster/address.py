"""Which Ray addresses the dispatcher may use: Ray has no authentication, so only this machine or a
private network, unless the owner says otherwise (FACECHAIN_RAY_ALLOW_PUBLIC)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from engine.errors import SettingsError

ADDRESS_SETTING = "FACECHAIN_RAY_ADDRESS"


def address_host(address: str) -> str | None:
    """The host in a Ray address (`host:port`, `ray://host:port`); None for `auto` (the cluster this
    machine is part of, started with `ray start`)."""
    address = address.strip()
    if address in ("auto", "local"):
        return None
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    if not parts.hostname:
        raise SettingsError(f"{ADDRESS_SETTING}={address!r} is not a Ray address: use host:port (e.g. "
                            "10.0.0.2:6379, printed by `ray start --head`) or auto.")
    return parts.hostname


def check_address(address: str, allow_public: bool) -> None:
    """SettingsError unless `address` is on this machine or a private network (or public is allowed)."""
    host = address_host(address)
    if host is None or allow_public:
        return
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise SettingsError(f"{ADDRESS_SETTING}: the host {host!r} does not resolve.") from None
    public = sorted(ip for ip in found if not _private(ip))
    if public:
        raise SettingsError(
            f"{ADDRESS_SETTING}={address} reaches {', '.join(public)}, which is not a private address. Ray has no "
            "authentication: keep the cluster on a private network (or a VPN), or set "
            "FACECHAIN_RAY_ALLOW_PUBLIC=true if the port is firewalled some other way.")


# Carrier-grade NAT space: what VPN meshes such as Tailscale hand out.
SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")


def _private(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return address.is_loopback or address.is_private or address.is_link_local or address in SHARED_SPACE
