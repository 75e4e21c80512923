"""`facechain-bot`: the Discord bot's entry point.

Starts the worker process (unless FACECHAIN_BOT_RUNS_WORKER=false), syncs the slash commands and
serves members until stopped with Ctrl-C or SIGTERM. `--check` only validates the settings.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from engine.config import Settings, load_settings
from engine.errors import FaceChainError

log = logging.getLogger("bot")


def check_settings(settings: Settings) -> list[str]:
    """Problems that would stop the bot from starting, each one line with its fix."""
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
        settings = load_settings()
    except FaceChainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problems = check_settings(settings)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    if args.check:
        print("settings ok")
        return 0
    return run(settings)


def run(settings: Settings) -> int:
    import discord

    from bot.client import FaceChainBot
    from bot.logs import configure_logging

    configure_logging(settings.log_level)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, as on Ctrl-C
    try:
        bot = FaceChainBot(settings)
    except FaceChainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        bot.run(settings.discord_token.get_secret_value(), log_handler=None)
    except discord.LoginFailure:
        print("error: Discord refused FACECHAIN_DISCORD_TOKEN: reset the token in the Developer Portal "
              "(your app -> Bot) and put the new one in .env", file=sys.stderr)
        return 2
    except discord.PrivilegedIntentsRequired:
        print("error: Discord refused an intent the bot asked for; check the Bot page of your app", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
