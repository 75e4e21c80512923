"""Run the real `facechain-bot` against the fake Discord at $FAKE_DISCORD_URL (used by the tests).

discord.py has its endpoints hard-coded: REST in `Route.BASE`, the gateway in
`DiscordWebSocket.DEFAULT_GATEWAY`. Both are pointed at the fake before the bot starts.
"""

import os
import sys

import discord.gateway
import discord.http
import yarl

from bot.main import main

url = os.environ["FAKE_DISCORD_URL"]
# The fake sends every guild at once: no need to wait Discord's 2 s for late GUILD_CREATEs before on_ready.
_client_init = discord.Client.__init__


def _quick_ready(self, *args, **options):
    options.setdefault("guild_ready_timeout", 0.1)
    _client_init(self, *args, **options)


discord.Client.__init__ = _quick_ready
discord.http.Route.BASE = f"{url}/api/v10"
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url.replace("http", "ws", 1) + "/gateway")

if __name__ == "__main__":
    sys.exit(main())
