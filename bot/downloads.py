"""Downloading enrolled photos from Discord's CDN, within size and host limits."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

TIMEOUT = aiohttp.ClientTimeout(total=60, sock_read=20)
SLOWEST_BYTES_PER_SECOND = 2 * 2**20  # a download of the largest allowed file may take this slow a link
CHUNK = 64 * 1024


def download_timeout(max_bytes: int) -> aiohttp.ClientTimeout:
    """A photo gets a minute; a file allowed to be larger (a 256 MB style LoRA), the time it takes at 2 MB/s."""
    return aiohttp.ClientTimeout(total=max(TIMEOUT.total, max_bytes / SLOWEST_BYTES_PER_SECOND),
                                 sock_read=TIMEOUT.sock_read)


@dataclass(frozen=True)
class Upload:
    name: str  # as the member named the file, for messages
    path: Path


@dataclass(frozen=True)
class Refused:
    name: str
    reason: str  # one line, for the member


class DownloadRefused(Exception):
    pass


@dataclass(frozen=True)
class Sources:
    """Where photos may come from (FACECHAIN_ATTACHMENT_HOSTS): plain host names are fetched over
    https only and must resolve to public addresses; an entry written `http://host:port` is trusted
    exactly as written (a local proxy, or the tests' fake Discord)."""

    https_hosts: frozenset[str]
    trusted_http: frozenset[str]  # "host:port", or "host" for any port


def allowed_sources(setting: str) -> Sources:
    entries = [entry.strip().lower() for entry in setting.split(",") if entry.strip()]
    trusted = {urlsplit(e).netloc for e in entries if e.startswith("http://")}
    return Sources(frozenset(e for e in entries if "://" not in e), frozenset(trusted))


def check_source(url: str, sources: Sources) -> None:
    """Refuse anything but an allowed host over https. An address written in the link must be public;
    where a name points is checked by the download session's resolver, in the lookup it connects with
    (aiohttp resolves no IP literal, so those are checked here)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "http" and {parts.netloc.lower(), host} & sources.trusted_http:
        return
    if parts.scheme != "https":
        raise DownloadRefused("it is not an https link")
    if host not in sources.https_hosts:
        raise DownloadRefused(f"it is not on Discord's CDN ({host or 'no host'})")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: PublicAddressResolver checks what it resolves to
    if not address.is_global:
        raise DownloadRefused("its link points at a private network address")


class PrivateAddress(OSError):
    pass


class PublicAddressResolver(AbstractResolver):
    """The download session's resolver: it refuses private addresses in the same lookup the connection
    uses, so a name cannot resolve to a public address for a check and to a private one a moment later
    for the connection (DNS rebinding). Hosts trusted as `http://host:port` are not checked."""

    def __init__(self, sources: Sources, inner: AbstractResolver | None = None) -> None:
        self.trusted_hosts = {urlsplit(f"http://{entry}").hostname for entry in sources.trusted_http}
        self.inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if host.lower() not in self.trusted_hosts and any(
                not ipaddress.ip_address(result["host"]).is_global for result in results):
            raise PrivateAddress(f"{host} resolves to a private network address")
        return results

    async def close(self) -> None:
        await self.inner.close()


def download_session(sources: Sources) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PublicAddressResolver(sources)))


# The first bytes of the photo formats Pillow reads for us; anything else is refused before queuing.
PHOTO_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


# ISO-BMFF brands of HEIC/HEIF (iPhone photos) and AVIF files.
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def looks_like_a_photo(head: bytes) -> bool:
    if head.startswith(PHOTO_SIGNATURES):
        return True
    return (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or (head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS)


def not_a_photo(head: bytes) -> str | None:
    """Why a download's first bytes are not a photo (None when they are)."""
    return None if looks_like_a_photo(head) else f"it is not a photo ({what_it_is(head)})"


def not_safetensors(head: bytes) -> str | None:
    """Why a download's first bytes are not a safetensors file: an 8-byte header length, then its JSON."""
    if len(head) > 8 and head[8:9] == b"{":
        return None
    return "it is not a .safetensors file (a pickle or another format: only safetensors are loaded)"


def what_it_is(head: bytes) -> str:
    """A guess for the refusal message."""
    text = head.lstrip()[:15].lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head.startswith(b"%PDF"):
        return "a PDF"
    if not head:
        return "empty"
    return "text" if all(32 <= b < 127 or b in b"\r\n\t" for b in head[:64]) else "not a photo format we read"


def upload_dir(data_dir: Path, user_id: str) -> Path:
    """A fresh owner-only folder under <data>/tmp/ (the worker only reads uploads from there)."""
    folder = data_dir / "tmp" / f"enroll-{user_id}-{secrets.token_hex(6)}"
    folder.mkdir(parents=True, mode=0o700)
    return folder


async def download(session: aiohttp.ClientSession, url: str, destination: Path, max_bytes: int,
                   sources: Sources, refuse: Callable[[bytes], str | None] = not_a_photo) -> None:
    """Stream `url` to `destination`, checking where it comes from, its size and its content (`refuse`
    says what is wrong with its first bytes: by default, not being a photo); DownloadRefused says why not."""
    check_source(url, sources)
    try:
        async with session.get(url, allow_redirects=False, timeout=download_timeout(max_bytes)) as response:
            if response.status != 200:
                raise DownloadRefused(f"Discord's CDN answered {response.status}; upload it again")
            if response.content_length and response.content_length > max_bytes:
                raise DownloadRefused(f"it is larger than {max_bytes // 2**20} MB")
            received = 0
            descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                async for chunk in response.content.iter_chunked(CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DownloadRefused(f"it is larger than {max_bytes // 2**20} MB")
                    if received == len(chunk) and (problem := refuse(chunk[:64])):
                        raise DownloadRefused(problem)
                    handle.write(chunk)
            if received == 0:
                raise DownloadRefused("the file is empty")
    except aiohttp.ClientConnectorDNSError as error:
        destination.unlink(missing_ok=True)
        if isinstance(error.os_error, PrivateAddress):
            raise DownloadRefused("its link points at a private network address") from None
        raise DownloadRefused(f"{urlsplit(url).hostname} could not be resolved; try again later") from None
    except (aiohttp.ClientError, TimeoutError) as error:
        destination.unlink(missing_ok=True)
        raise DownloadRefused(f"the download failed ({type(error).__name__}); upload it again") from None
    except DownloadRefused:
        destination.unlink(missing_ok=True)
        raise
