"""`facechain-bot`: the Discord bot's entry point.

The slash commands arrive with the bot issue (#6); until then this validates the settings the
bot needs, so a server owner can prepare `.env` and see every problem in one run.
"""

from __future__ import annotations

import argparse
import sys

from engine.config import load_settings
from engine.errors import FaceChainError


def check_settings() -> list[str]:
    """Problems that would stop the bot from starting, each one line with its fix."""
    settings = load_settings()
    problems = []
    if settings.discord_token is None or not settings.discord_token.get_secret_value():
        problems.append(
            "FACECHAIN_DISCORD_TOKEN is not set: put it in .env (Developer Portal -> your app -> Bot -> Reset Token)"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facechain-bot", description="FaceChain Discord bot.")
    parser.add_argument("--check", action="store_true", help="validate settings and exit")
    args = parser.parse_args(argv)
    try:
        problems = check_settings()
    except FaceChainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    if args.check:
        print("settings ok")
        return 0
    print(
        "error: the Discord commands are not built yet (issue #6). Run `facechain doctor` to check this "
        "machine, and `facechain enroll` to try the engine.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
