"""The `facechain` parser: each command group registers its own commands, and `main` runs one."""

from __future__ import annotations

import argparse
import logging
import sys

from engine.cli import jobs, members, pictures, setup, styles
from engine.cli.common import USAGE_ERROR
from engine.config import load_settings
from engine.errors import FaceChainError

GROUPS = (setup, members, pictures, jobs, styles)
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facechain", description="FaceChain portrait engine (no Discord needed).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
        for chatty in QUIET_LOGGERS:  # a line per HTTP request of the hub clients is no news to a person
            logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
        return args.handler(args, settings)
    except FaceChainError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
