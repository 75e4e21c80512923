"""Which Ray addresses the dispatcher may use: Ray has no authentication, so only this machine or a
private network, unless the owner says otherwise (FACECHAIN_RAY_ALLOW_PUBLIC)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from engine.errors import SettingsError

ADDRESS_SETTING = "FACECHAIN_RAY_ADDRESS"
GCS_PORT, CLIENT_PORT = 6379, 10001  # Ray's defaults: `ray start --head`, and the ray:// client server


def address_host(address: str) -> str | None:
    """The host in a Ray address (`host:port`, `ray://host:port`); None for `auto` (the cluster this
    machine is part of, started with `ray start`)."""
    host, _ = _host_and_port(address)
    return host


def _host_and_port(address: str) -> tuple[str | None, int]:
    address = address.strip()
    if address in ("auto", "local"):
        return None, 0
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        port = parts.port or (CLIENT_PORT if parts.scheme == "ray" else GCS_PORT)
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise SettingsError(f"{ADDRESS_SETTING}={address!r} is not a Ray address: use host:port (e.g. "
                            "10.0.0.2:6379, printed by `ray start --head`) or auto.")
    return parts.hostname, port


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """SettingsError unless something listens at the address (ray.init itself would wait for minutes)."""
    host, port = _host_and_port(address)
    if host is None:
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise SettingsError(f"No Ray cluster answers at {address} ({error.strerror or type(error).__name__}): "
                            "start it with `ray start --head` (see the README).") from None


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
