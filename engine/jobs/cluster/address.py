"""Which Ray addresses the dispatcher may use: Ray has no authentication, so only this machine or a
private network, unless the owner says otherwise (FACECHAIN_RAY_ALLOW_PUBLIC)."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import SettingsError

ADDRESS_SETTING = "FACECHAIN_RAY_ADDRESS"
GCS_PORT = 6379  # Ray's default: `ray start --head`
# Where `ray start` on this machine notes the cluster it started or joined (what `auto` falls back to).
CURRENT_CLUSTER_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def address_host(address: str) -> str | None:
    """The host in a Ray address (`host:port`); for `auto`, the host of the address Ray will use
    (RAY_ADDRESS, else the cluster this machine joined with `ray start`), None when there is none."""
    host, _ = _host_and_port(address)
    return host


def resolve_auto(address: str) -> str | None:
    """The address Ray connects to for `auto`: RAY_ADDRESS when set, else the one `ray start` wrote on
    this machine; None when neither is there (Ray then finds no cluster). Other addresses as given."""
    if address.strip() != "auto":
        return address.strip()
    if env := os.environ.get("RAY_ADDRESS", "").strip():
        return env
    try:
        return CURRENT_CLUSTER_FILE.read_text().strip() or None
    except OSError:
        return None


def _host_and_port(address: str) -> tuple[str | None, int]:
    address = address.strip()
    if address == "auto":
        resolved = resolve_auto(address)
        if resolved is None or resolved == "auto":
            return None, 0
        address = resolved
    if address == "local":
        return None, 0
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if parts.scheme == "ray":
        raise SettingsError(
            f"{ADDRESS_SETTING}={address} is a Ray Client address (ray://), which cannot stream the jobs' progress "
            "and checkpoints: run the bot's worker on a machine of the cluster and use the head's host:port "
            "(e.g. 10.0.0.2:6379, printed by `ray start --head`).")
    try:
        port = parts.port or GCS_PORT
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
    """SettingsError unless `address` (for `auto`, the one Ray will use) is on this machine or a
    private network (or public is allowed). A ray:// address is refused whatever the host."""
    host = address_host(address)
    if host is None or allow_public:
        return
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise SettingsError(f"{ADDRESS_SETTING}: the host {host!r} does not resolve.") from None
    public = sorted(ip for ip in found if not _private(ip))
    if public:
        shown = address if address.strip() != "auto" else f"auto (which is {resolve_auto(address)})"
        raise SettingsError(
            f"{ADDRESS_SETTING}={shown} reaches {', '.join(public)}, which is not a private address. {PUBLIC_ADVICE}")


def check_node_addresses(node_ips: list[str], allow_public: bool) -> None:
    """SettingsError naming the cluster's nodes at public addresses (unless public is allowed): a node
    that joined from the internet gets members' face crops and face models."""
    public = sorted({ip for ip in node_ips if not _private(ip)})
    if public and not allow_public:
        raise SettingsError(f"The Ray cluster has nodes at {', '.join(public)}, which are not private addresses: "
                            f"no job is sent to it. {PUBLIC_ADVICE}")


PUBLIC_ADVICE = ("Anyone who reaches a Ray port can run code on the cluster: keep it on a private network (or a "
                 "VPN) and turn on Ray's token authentication (RAY_AUTH_MODE=token, see the README), or set "
                 "FACECHAIN_RAY_ALLOW_PUBLIC=true if it is firewalled some other way.")


def token_auth_on() -> bool:
    """Whether this process talks to Ray with token authentication (RAY_AUTH_MODE=token)."""
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"


# Carrier-grade NAT space: what VPN meshes such as Tailscale hand out.
SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")


def _private(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return address.is_loopback or address.is_private or address.is_link_local or address in SHARED_SPACE
