"""`facechain provenance check IMAGE`: which of the bot's three "made by AI" marks a picture carries."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from engine.cli.common import command, report
from engine.config import Settings
from engine.errors import FaceChainError


def cmd_provenance_check(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when any mark is found, 1 when none is."""
    from engine.provenance import check

    path = Path(args.image)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FaceChainError(f"Cannot read {path}: {error.strerror or error}.") from None
    found = check(data)
    report(args, {"path": str(path), **asdict(found)}, f"{path}:\n  " + "\n  ".join(found.lines()))
    return 0 if found.xmp or found.c2pa_ai or found.watermark_found else 1


def register(commands) -> None:
    provenance = commands.add_parser("provenance", help="the marks that say a picture was made by AI").add_subparsers(
        dest="provenance_command", required=True, metavar="ACTION")
    check = command(provenance, "check", cmd_provenance_check,
                    "say which marks a picture carries: XMP source type, C2PA manifest, invisible watermark "
                    "(exit 1 when none)")
    check.add_argument("image", metavar="IMAGE")
