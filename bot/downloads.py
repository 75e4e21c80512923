"""Downloading enrolled photos from Discord's CDN, within size and host limits."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=60, sock_read=20)
CHUNK = 64 * 1024


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


def allowed_hosts(setting: str) -> set[str]:
    return {host.strip().lower() for host in setting.split(",") if host.strip()}


def upload_dir(data_dir: Path, user_id: str) -> Path:
    """A fresh owner-only folder under <data>/tmp/ (the worker only reads uploads from there)."""
    folder = data_dir / "tmp" / f"enroll-{user_id}-{secrets.token_hex(6)}"
    folder.mkdir(parents=True, mode=0o700)
    return folder


async def download(session: aiohttp.ClientSession, url: str, destination: Path, max_bytes: int,
                   hosts: set[str]) -> None:
    """Stream `url` to `destination`; DownloadRefused says why not."""
    host = (urlsplit(url).hostname or "").lower()
    if host not in hosts:
        raise DownloadRefused(f"it is not on Discord's CDN ({host or 'no host'})")
    try:
        async with session.get(url, allow_redirects=False, timeout=TIMEOUT) as response:
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
                    handle.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as error:
        destination.unlink(missing_ok=True)
        raise DownloadRefused(f"the download failed ({type(error).__name__}); upload it again") from None
    except DownloadRefused:
        destination.unlink(missing_ok=True)
        raise
