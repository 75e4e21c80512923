"""A local fake of the parts of Discord the bot uses, to drive the real discord.py client.

REST routes under /api/v10 (login, command sync, interaction callbacks, webhook edits and
follow-ups, channel messages with files, DMs), a websocket gateway at /gateway (HELLO, READY,
GUILD_CREATE, heartbeats, INTERACTION_CREATE dispatches) and a CDN route at /attachments/ that
serves the photos a test "uploads". Every REST call is recorded with its time, and every
interaction with the time it was sent and acknowledged, so tests assert on what members see.

The server runs on its own event loop in a thread; tests call its methods from their own thread.
See ../shared/GUIDE.md §3 for the details of discord.py this has to respect.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

API = "/api/v10"
APP_ID = "900000000000000001"
BOT_USER = {"id": "900000000000000002", "username": "FaceChain", "discriminator": "0", "global_name": None,
            "avatar": None, "bot": True, "flags": 0}
DISCORD_EPOCH_MS = 1_420_070_400_000
EPHEMERAL = 64
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)
MANAGE_GUILD = 1 << 5
OPTION_TYPES = {str: 3, int: 4, bool: 5, float: 10}
THREAD_METADATA = {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": "2026-01-01T00:00:00+00:00",
                   "locked": False}


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py parses a reply as JSON only when the content type is exactly application/json.
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status)


@dataclass
class Interaction:
    id: str
    token: str
    kind: int  # 2 command, 3 component, 4 autocomplete
    user_id: str
    channel_id: str
    guild_id: str | None
    sent_at: float
    acked_at: float | None = None
    callback_type: int | None = None
    response_message_id: str | None = None
    choices: list[dict] | None = None  # autocomplete answer
    modal: dict | None = None  # a modal the bot opened in answer
    clicked_message_id: str | None = None  # the message a component interaction came from

    @property
    def ack_seconds(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.sent_at


@dataclass
class Message:
    id: str
    channel_id: str
    content: str = ""
    embeds: list[dict] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # filename -> bytes
    flags: int = 0
    interaction_token: str | None = None
    deleted: bool = False
    edits: int = 0

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    def text(self) -> str:
        """Content plus every embed's visible text, for assertions."""
        parts = [self.content]
        for embed in self.embeds:
            parts += [embed.get("title", ""), embed.get("description", "")]
            parts += [f"{f.get('name', '')}: {f.get('value', '')}" for f in embed.get("fields", [])]
            parts.append((embed.get("footer") or {}).get("text", ""))
        return "\n".join(p for p in parts if p)

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for row in self.components for c in row.get("components", []) if "custom_id" in c]

    def payload(self, guild_id: str | None) -> dict:
        attachments = [
            {"id": str(int(self.id) + index + 1), "filename": name, "size": len(data), "url": f"http://fake/{name}",
             "proxy_url": f"http://fake/{name}", "content_type": "image/png"}
            for index, (name, data) in enumerate(self.files.items())
        ]
        data = {
            "id": self.id, "channel_id": self.channel_id, "type": 0, "content": self.content,
            "author": BOT_USER, "embeds": self.embeds, "components": self.components, "attachments": attachments,
            "timestamp": "2026-01-01T00:00:00+00:00", "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "pinned": False, "flags": self.flags,
        }
        if guild_id:
            data["guild_id"] = guild_id
        return data


@dataclass
class Fault:
    """Answer the next `times` calls of `method` to paths starting with `path` with `status`."""

    method: str
    path: str
    status: int
    times: int = 1
    retry_after: float = 0.5
    hits: list[float] = field(default_factory=list)

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and path.startswith(self.path)


@dataclass
class Call:
    at: float
    method: str
    path: str
    body: dict | None


class FakeDiscord:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.guilds: dict[str, dict] = {}  # id -> {"name", "channels": {id: type}, "members": {user_id: perms}}
        self.users: dict[str, dict] = {}
        self.dm_channels: dict[str, str] = {}  # user id -> DM channel id
        self.messages: dict[str, Message] = {}
        self.interactions: dict[str, Interaction] = {}  # by token
        self.calls: list[Call] = []
        self.commands: list[dict] = []
        self.expired_tokens: set[str] = set()
        self.gone_channels: set[str] = set()
        self.attachments: dict[str, tuple[bytes, str]] = {}
        self.gateway_connections = 0
        self.token: str | None = None  # when set, REST calls with another token get 401
        self.faults: list[Fault] = []  # answers to give instead of the real ones (rate limits, outages)
        self.resumes = 0
        self._sockets: list[web.WebSocketResponse] = []
        self._sequence = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.identified = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeDiscord:
        threading.Thread(target=self._loop.run_forever, name="fake-discord", daemon=True).start()
        self._run(self._start())
        return self

    def stop(self) -> None:
        self._run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self, coroutine, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{name}", self._attachment)
        app.router.add_route("*", API + "/{path:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def new_id(self) -> str:
        """A real-looking snowflake: discord.py reads creation times from ids."""
        milliseconds = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((milliseconds << 22) | (next(self._ids) & 0x3FFFFF))

    # --- world ----------------------------------------------------------------------------------

    def add_user(self, name: str) -> str:
        user_id = self.new_id()
        self.users[user_id] = {"id": user_id, "username": name, "discriminator": "0", "global_name": name.title(),
                               "avatar": None, "bot": False, "flags": 0}
        return user_id

    def add_guild(self, name: str, channels: list[str], members: dict[str, bool], forums: tuple[str, ...] = (),
                  age_restricted: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
        """A guild with text channels and forum channels (name -> id returned) and members (user id -> is admin);
        the `age_restricted` channels are marked NSFW, as Discord's "age-restricted channel" setting does."""
        guild_id = self.new_id()
        channel_ids = {channel: self.new_id() for channel in [*channels, *forums]}
        self.guilds[guild_id] = {"name": name, "channels": channel_ids, "members": members,
                                 "forums": {channel_ids[f] for f in forums}, "threads": {},
                                 "nsfw": {channel_ids[c] for c in age_restricted}}
        return guild_id, channel_ids

    def host_attachment(self, name: str, data: bytes, content_type: str = "image/jpeg") -> dict:
        attachment_id = self.new_id()
        self.attachments[f"{attachment_id}-{name}"] = (data, content_type)
        url = f"{self.url}/attachments/{attachment_id}-{name}"
        return {"id": attachment_id, "filename": name, "size": len(data), "url": url, "proxy_url": url,
                "content_type": content_type}

    # --- driving the bot ------------------------------------------------------------------------

    def command(self, user_id: str, channel_id: str, guild_id: str | None, subcommand: str,
                options: dict[str, Any] | None = None, attachments: dict[str, dict] | None = None,
                group: str = "facechain", focused: str | None = None) -> Interaction:
        """Run `/group subcommand option:value ...`; attachments are `host_attachment` results.
        With `focused`, it is an autocomplete request for that option instead."""
        resolved: dict[str, dict] = {}
        sub_options = []
        for name, value in (options or {}).items():
            if isinstance(value, dict) and "user" in value:  # {"user": id}: a member option
                user = self.users[value["user"]]
                resolved.setdefault("users", {})[user["id"]] = user
                sub_options.append({"type": 6, "name": name, "value": user["id"]})
            elif isinstance(value, dict):  # {"channel": name}: a channel option of this guild
                chosen = self.guilds[guild_id]["channels"][value["channel"]]
                kind = 15 if chosen in self.guilds[guild_id]["forums"] else 0
                resolved.setdefault("channels", {})[chosen] = {"id": chosen, "type": kind, "name": value["channel"],
                                                               "permissions": "0", "guild_id": guild_id}
                sub_options.append({"type": 7, "name": name, "value": chosen})
            else:
                sub_options.append({"type": OPTION_TYPES[type(value)], "name": name, "value": value,
                                    **({"focused": True} if name == focused else {})})
        for name, attachment in (attachments or {}).items():
            sub_options.append({"type": 11, "name": name, "value": attachment["id"]})
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
        data: dict[str, Any] = {"id": self.new_id(), "name": group, "type": 1,
                                "options": [{"type": 1, "name": subcommand, "options": sub_options}]}
        if resolved:
            data["resolved"] = resolved
        return self._dispatch_interaction(4 if focused else 2, user_id, channel_id, guild_id, data)

    def click(self, user_id: str, message: Message, custom_id: str, values: list[str] | None = None) -> Interaction:
        """Press a button (or pick `values` in a select menu) on a message the bot sent."""
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": 2 if values is None else 3}
        if values is not None:
            data["values"] = values
        guild_id = self._guild_of(message.channel_id)
        return self._dispatch_interaction(3, user_id, message.channel_id, guild_id, data, message=message)

    def submit_modal(self, user_id: str, opened_by: Interaction, values: dict[str, str]) -> Interaction:
        """Fill in the modal the bot opened in answer to `opened_by` (text inputs by custom id) and submit it."""
        self.wait_for(lambda: opened_by.modal, 10, "the modal")

        def filled(components: list[dict]) -> list[dict]:
            out = []
            for component in components:
                if component["type"] == 1:
                    out.append({"type": 1, "components": filled(component["components"])})
                elif component["type"] == 18:
                    out.append({"type": 18, "component": filled([component["component"]])[0]})
                elif component["type"] == 4:
                    out.append({"type": 4, "custom_id": component["custom_id"],
                                "value": values.get(component["custom_id"], "")})
            return out

        data = {"custom_id": opened_by.modal["custom_id"], "components": filled(opened_by.modal["components"])}
        message = self.messages.get(opened_by.clicked_message_id or "")
        channel = message.channel_id if message else opened_by.channel_id
        return self._dispatch_interaction(5, user_id, channel, self._guild_of(channel), data, message=message)

    def _guild_of(self, channel_id: str) -> str | None:
        return next((g for g, guild in self.guilds.items()
                     if channel_id in guild["channels"].values() or channel_id in guild["threads"]), None)

    def _dispatch_interaction(self, kind: int, user_id: str, channel_id: str, guild_id: str | None, data: dict,
                              message: Message | None = None) -> Interaction:
        interaction_id = self.new_id()
        token = f"token-{interaction_id}"
        payload: dict[str, Any] = {
            "id": interaction_id, "application_id": APP_ID, "type": kind, "token": token, "version": 1,
            "data": data, "channel_id": channel_id, "locale": "en-US", "app_permissions": str(MEMBER_PERMISSIONS),
            "entitlements": [], "attachment_size_limit": 25 * 2**20,
            "authorizing_integration_owners": {"0": guild_id} if guild_id else {"1": user_id},
            "context": 0 if guild_id else 1,
        }
        if guild_id:
            admin = self.guilds[guild_id]["members"].get(user_id, False)
            payload["guild_id"] = guild_id
            payload["guild_locale"] = "en-US"
            payload["channel"] = self._channel_payload(guild_id, channel_id)
            payload["member"] = {
                "user": self.users[user_id], "roles": [], "joined_at": "2026-01-01T00:00:00+00:00", "deaf": False,
                "mute": False, "flags": 0, "permissions": str(MEMBER_PERMISSIONS | (MANAGE_GUILD if admin else 0)),
            }
        else:
            payload["channel"] = {"id": channel_id, "type": 1, "recipients": [self.users[user_id]]}
            payload["user"] = self.users[user_id]
        if message is not None:
            payload["message"] = message.payload(guild_id)
        record = Interaction(interaction_id, token, kind, user_id, channel_id, guild_id, time.monotonic(),
                             clicked_message_id=message.id if message else None)
        self.interactions[token] = record
        self._run(self._send_dispatch("INTERACTION_CREATE", payload))
        return record

    def _channel_payload(self, guild_id: str, channel_id: str) -> dict:
        guild = self.guilds[guild_id]
        thread = guild["threads"].get(channel_id)
        if thread is not None:
            return {"id": channel_id, "type": 11, "guild_id": guild_id, "parent_id": thread["parent_id"],
                    "name": thread["name"], "owner_id": BOT_USER["id"], "member_count": 1, "message_count": 1,
                    "thread_metadata": THREAD_METADATA}
        name = next(n for n, c in guild["channels"].items() if c == channel_id)
        return {"id": channel_id, "type": 15 if channel_id in guild["forums"] else 0, "guild_id": guild_id,
                "name": name, "position": 0, "permission_overwrites": [], "nsfw": channel_id in guild["nsfw"],
                "parent_id": None}

    def drop_gateway(self) -> None:
        """Close the bot's websocket as Discord does now and then; the client should resume."""
        async def close() -> None:
            for socket in list(self._sockets):
                await socket.close(code=4000, message=b"fake Discord dropped the connection")
        self._run(close())

    def dm_channel(self, user_id: str) -> str:
        if user_id not in self.dm_channels:
            self.dm_channels[user_id] = self.new_id()
        return self.dm_channels[user_id]

    # --- looking at what the bot did ----------------------------------------------------------

    def wait_for(self, condition, timeout: float = 60, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_acked(self, interaction: Interaction, timeout: float = 10) -> Interaction:
        self.wait_for(lambda: interaction.acked_at is not None, timeout, f"an answer to interaction {interaction.id}")
        return interaction

    def response(self, interaction: Interaction, timeout: float = 30) -> Message:
        """The message an interaction's response created or updated, once it says something
        (a deferred "thinking..." message is empty until the bot edits it)."""
        self.wait_acked(interaction)

        def said() -> Message | None:
            message = self.messages.get(interaction.response_message_id or "")
            return message if message is not None and (message.text() or message.files) else None
        return self.wait_for(said, timeout, "the response message")

    def channel_messages(self, channel_id: str) -> list[Message]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]

    def followups(self, interaction: Interaction) -> list[Message]:
        return [m for m in self.messages.values() if m.interaction_token == interaction.token
                and m.id != interaction.response_message_id and not m.deleted]

    # --- gateway --------------------------------------------------------------------------------

    async def _send_dispatch(self, event: str, data: dict) -> None:
        if not self._sockets:
            raise RuntimeError("the bot is not connected to the fake gateway")
        await self._sockets[-1].send_str(json.dumps({"op": 0, "t": event, "s": next(self._sequence), "d": data}))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.gateway_connections += 1
        self._sockets.append(socket)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if message["op"] == 1:
                await socket.send_str(json.dumps({"op": 11}))
            elif message["op"] == 2:
                await self._identify(socket)
            elif message["op"] == 6:
                self.resumes += 1
                await socket.send_str(json.dumps({"op": 0, "t": "RESUMED", "s": next(self._sequence), "d": {}}))
        if socket in self._sockets:
            self._sockets.remove(socket)
        return socket

    async def _identify(self, socket: web.WebSocketResponse) -> None:
        ready = {
            "v": 10, "user": BOT_USER, "session_id": self.new_id(), "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway",
            "guilds": [{"id": g, "unavailable": True} for g in self.guilds], "application": {"id": APP_ID, "flags": 0},
            "private_channels": [], "relationships": [],
        }
        await socket.send_str(json.dumps({"op": 0, "t": "READY", "s": next(self._sequence), "d": ready}))
        for guild_id in self.guilds:
            await socket.send_str(json.dumps(
                {"op": 0, "t": "GUILD_CREATE", "s": next(self._sequence), "d": self._guild_payload(guild_id)}))
        self.identified.set()

    def _guild_payload(self, guild_id: str) -> dict:
        guild = self.guilds[guild_id]
        members = [{"user": self.users[u], "roles": [], "joined_at": "2026-01-01T00:00:00+00:00", "deaf": False,
                    "mute": False, "flags": 0} for u in guild["members"]]
        members.append({"user": BOT_USER, "roles": [], "joined_at": "2026-01-01T00:00:00+00:00", "deaf": False,
                        "mute": False, "flags": 0})
        return {
            "id": guild_id, "name": guild["name"], "icon": None,
            "owner_id": next(iter(guild["members"]), BOT_USER["id"]),
            "roles": [{"id": guild_id, "name": "@everyone", "permissions": str(MEMBER_PERMISSIONS), "position": 0,
                       "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}],
            "channels": [{"id": c, "type": 15 if c in guild["forums"] else 0, "name": name, "position": i,
                          "permission_overwrites": [], "nsfw": c in guild["nsfw"], "parent_id": None,
                          "available_tags": [],
                          "flags": 0} for i, (name, c) in enumerate(guild["channels"].items())],
            "members": members, "member_count": len(members), "features": [], "emojis": [], "stickers": [],
            "threads": [], "voice_states": [], "presences": [], "large": False, "unavailable": False,
            "joined_at": "2026-01-01T00:00:00+00:00", "mfa_level": 0, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "system_channel_id": None,
            "premium_tier": 0, "preferred_locale": "en-US", "nsfw_level": 0,
        }

    async def _attachment(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.attachments:
            return web.Response(status=404)
        data, content_type = self.attachments[name]
        return web.Response(body=data, headers={"Content-Type": content_type})

    # --- REST -----------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body, files = await self._read_body(request)
        self.calls.append(Call(time.monotonic(), request.method, path, body))
        if self.token and request.headers.get("Authorization") != f"Bot {self.token}" and "interactions" not in path:
            return _error(401, 0, "401: Unauthorized")
        fault = next((f for f in self.faults if f.matches(request.method, path)), None)
        if fault is not None:
            fault.times -= 1
            fault.hits.append(time.monotonic())
            if fault.status == 429:
                return web.Response(body=json.dumps({"message": "You are being rate limited.", "retry_after":
                                                     fault.retry_after, "global": False}).encode(), status=429,
                                    headers={"Content-Type": "application/json", "Retry-After": str(fault.retry_after),
                                             "X-RateLimit-Scope": "user",
                                             # discord.py takes a 429 without it for a Cloudflare ban
                                             "Via": "1.1 google"})
            return web.Response(status=fault.status, text="upstream trouble")
        parts = path.strip("/").split("/")
        route = (request.method, *parts)
        match route:
            case ("GET", "users", "@me"):
                return _json(BOT_USER)
            case ("GET", "oauth2", "applications", "@me"):
                return _json({"id": APP_ID, "name": "FaceChain", "description": "", "icon": None, "bot_public": True,
                              "bot_require_code_grant": False, "owner": self.users and next(iter(self.users.values()))
                              or BOT_USER, "verify_key": "0" * 64, "flags": 0, "team": None,
                              "interactions_endpoint_url": None})
            case ("GET", "gateway") | ("GET", "gateway", "bot"):
                return _json({"url": f"ws://127.0.0.1:{self.port}/gateway", "shards": 1, "session_start_limit": {
                    "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})
            case ("PUT", "applications", _, "commands") | ("PUT", "applications", _, "guilds", _, "commands"):
                self.commands = [{**command, "id": self.new_id(), "application_id": APP_ID, "version": "1"}
                                 for command in body]
                return _json(self.commands)
            case ("POST", "interactions", _, token, "callback"):
                return self._callback(token, body, files, "with_response" in request.query)
            case ("PATCH", "webhooks", _, token, "messages", message_id):
                return self._webhook_edit(token, message_id, body, files)
            case ("GET", "webhooks", _, token, "messages", message_id):
                return self._webhook_message(token, message_id)
            case ("DELETE", "webhooks", _, token, "messages", message_id):
                if token in self.expired_tokens:
                    return _error(401, 50027, "Invalid Webhook Token")
                message = self._message_of(token, message_id)
                if message:
                    message.deleted = True
                return web.Response(status=204)
            case ("POST", "webhooks", _, token):
                return self._followup(token, body, files)
            case ("POST", "channels", channel_id, "messages"):
                if not self._channel_exists(channel_id):
                    return _error(404, 10003, "Unknown Channel")
                message = self._new_message(channel_id, body, files)
                return _json(message.payload(self._guild_of(channel_id)))
            case ("PATCH", "channels", channel_id, "messages", message_id):
                message = self.messages.get(message_id)
                if message is None or message.deleted:
                    return _error(404, 10008, "Unknown Message")
                self._apply_edit(message, body, files)
                return _json(message.payload(self._guild_of(channel_id)))
            case ("DELETE", "channels", channel_id, "messages", message_id):
                message = self.messages.get(message_id)
                if message is None or message.deleted:
                    return _error(404, 10008, "Unknown Message")
                message.deleted = True
                return web.Response(status=204)
            case ("GET", "users", user_id) if user_id in self.users:
                return _json(self.users[user_id])
            case ("POST", "channels", forum_id, "threads"):
                guild_id = self._guild_of(forum_id)
                if guild_id is None or forum_id not in self.guilds[guild_id]["forums"]:
                    return _error(404, 10003, "Unknown Channel")
                thread_id = self.new_id()  # a forum post's first message has the thread's id
                self.guilds[guild_id]["threads"][thread_id] = {"parent_id": forum_id, "name": body["name"]}
                message = Message(thread_id, thread_id)
                self._apply_edit(message, body.get("message") or {}, files)
                self.messages[thread_id] = message
                return _json({"id": thread_id, "type": 11, "guild_id": guild_id, "parent_id": forum_id,
                              "name": body["name"], "owner_id": BOT_USER["id"], "message_count": 1,
                              "member_count": 1, "thread_metadata": THREAD_METADATA,
                              "message": message.payload(guild_id)})
            case ("DELETE", "channels", thread_id):
                guild_id = self._guild_of(thread_id)
                if guild_id is None or thread_id not in self.guilds[guild_id]["threads"]:
                    return _error(404, 10003, "Unknown Channel")
                del self.guilds[guild_id]["threads"][thread_id]
                for message in self.channel_messages(thread_id):
                    message.deleted = True
                return _json({"id": thread_id, "type": 11})
            case ("POST", "users", "@me", "channels"):
                recipient = str(body["recipient_id"])
                return _json({"id": self.dm_channel(recipient), "type": 1, "recipients": [self.users[recipient]],
                              "last_message_id": None})
        return _error(404, 0, f"fake Discord has no route {request.method} {path}")

    async def _read_body(self, request: web.Request) -> tuple[Any, dict[str, bytes]]:
        if request.content_type.startswith("multipart/"):
            body, files = None, {}
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files[part.filename] = bytes(await part.read())
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), {}

    def _channel_exists(self, channel_id: str) -> bool:
        if channel_id in self.gone_channels:
            return False
        return self._guild_of(channel_id) is not None or channel_id in self.dm_channels.values()

    def _new_message(self, channel_id: str, body: dict | None, files: dict[str, bytes],
                     token: str | None = None) -> Message:
        message = Message(self.new_id(), channel_id, interaction_token=token)
        self._apply_edit(message, body or {}, files)
        message.edits = 0
        self.messages[message.id] = message
        return message

    def _apply_edit(self, message: Message, body: dict, files: dict[str, bytes]) -> None:
        message.edits += 1
        if "content" in body:
            message.content = body["content"] or ""
        if "embeds" in body:
            message.embeds = body["embeds"] or []
        if "components" in body:
            message.components = body["components"] or []
        if "flags" in body and body["flags"] is not None:
            message.flags = body["flags"]
        if "attachments" in body:  # kept attachments are listed by id; new ones arrive as files
            # New uploads are numbered 0..9; attachments kept from before carry their (large) ids.
            kept = {a.get("filename") for a in body["attachments"] if int(a.get("id", 0)) >= 1000}
            message.files = {name: data for name, data in message.files.items() if name in kept}
        message.files.update(files)

    def _callback(self, token: str, body: dict, files: dict[str, bytes], with_response: bool) -> web.Response:
        interaction = self.interactions.get(token)
        if interaction is None:
            return _error(404, 10062, "Unknown interaction")
        if interaction.acked_at is not None:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        interaction.acked_at = time.monotonic()
        kind = interaction.callback_type = body["type"]
        data = body.get("data") or {}
        message = None
        if kind in (4, 5):  # a new message (5: "thinking..." until edited)
            message = self._new_message(interaction.channel_id, data, files, token)
        elif kind in (6, 7):  # update the message the component is on
            message = self._component_message(interaction)
            if kind == 7 and message is not None:
                self._apply_edit(message, data, files)
        elif kind == 8:
            interaction.choices = data.get("choices", [])
        elif kind == 9:
            interaction.modal = data
        if message is not None:
            interaction.response_message_id = message.id
        if not with_response:
            return web.Response(status=204)
        reply: dict[str, Any] = {"interaction": {
            "id": interaction.id, "type": interaction.kind, "response_message_id": message.id if message else None,
            "response_message_loading": kind == 5, "response_message_ephemeral": bool(data.get("flags", 0) & EPHEMERAL),
        }, "resource": {"type": kind}}
        if message is not None:
            reply["resource"]["message"] = message.payload(interaction.guild_id)
        return _json(reply)

    def _component_message(self, interaction: Interaction) -> Message | None:
        return self.messages.get(interaction.clicked_message_id or "")

    def _message_of(self, token: str, message_id: str) -> Message | None:
        interaction = self.interactions.get(token)
        if interaction is None:
            return None
        if message_id == "@original":
            return self.messages.get(interaction.response_message_id or "")
        message = self.messages.get(message_id)
        return message if message and message.interaction_token == token else None

    def _webhook_edit(self, token: str, message_id: str, body: dict, files: dict[str, bytes]) -> web.Response:
        if token in self.expired_tokens:
            return _error(401, 50027, "Invalid Webhook Token")
        message = self._message_of(token, message_id)
        if message is None or message.deleted:
            return _error(404, 10008, "Unknown Message")
        self._apply_edit(message, body or {}, files)
        return _json(message.payload(self.interactions[token].guild_id))

    def _webhook_message(self, token: str, message_id: str) -> web.Response:
        message = self._message_of(token, message_id)
        if message is None or token in self.expired_tokens:
            return _error(404, 10008, "Unknown Message")
        return _json(message.payload(self.interactions[token].guild_id))

    def _followup(self, token: str, body: dict, files: dict[str, bytes]) -> web.Response:
        if token in self.expired_tokens:
            return _error(401, 50027, "Invalid Webhook Token")
        interaction = self.interactions.get(token)
        if interaction is None:
            return _error(404, 10015, "Unknown Webhook")
        message = self._new_message(interaction.channel_id, body, files, token)
        return _json(message.payload(interaction.guild_id))
