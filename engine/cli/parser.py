"""The `facechain` parser: each command group registers its own commands, and `main` runs one."""

from __future__ import annotations

import argparse
import logging
import sys

from engine.cli.common import USAGE_ERROR
from engine.cli.jobs import register as register_jobs
from engine.cli.members import register as register_members
from engine.cli.pictures import register as register_pictures
from engine.cli.poses import register as register_poses
from engine.cli.provenance import register as register_provenance
from engine.cli.setup import register as register_setup
from engine.cli.styles import register as register_styles
from engine.cli.together import register as register_together
from engine.config import load_settings
from engine.errors import FaceChainError

# Each command group adds its own commands, in the order `facechain --help` lists them.
GROUPS = (register_setup, register_members, register_pictures, register_together, register_jobs, register_styles,
          register_poses, register_provenance)
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facechain", description="FaceChain portrait engine (no Discord needed).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in GROUPS:
        register(commands)
    return parser


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes: a caller that swaps it after setup (a test's
    capture, since closed) never gets a logging error in place of a message."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s",
                            handlers=[StderrHandler()])
        for chatty in QUIET_LOGGERS:  # a line per HTTP request of the hub clients is no news to a person
            logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
        return args.handler(args, settings)
    except FaceChainError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
