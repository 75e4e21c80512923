"""Building blocks for interactive messages: error-safe callbacks and dialogs only their owner can use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot.replies import not_yours, reply, report_error

if TYPE_CHECKING:
    from bot.client import FaceChainBot


def client(interaction: discord.Interaction) -> FaceChainBot:
    return interaction.client  # type: ignore[return-value]


def age_restricted(channel: object) -> bool:
    """Whether a channel (or a thread's parent) is marked age-restricted; DMs and unknown channels are not."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


async def guarded(interaction: discord.Interaction, action: Callable[[], Awaitable[None]]) -> None:
    try:
        await action()
    except Exception as error:  # noqa: BLE001 - every failure becomes a friendly message and a log line
        await report_error(interaction, error)


class OwnerView(discord.ui.View):
    """A short-lived dialog only `owner_id` can press."""

    def __init__(self, owner_id: int, timeout: float = 600) -> None:
        super().__init__(timeout=timeout)
        self.owner_id = owner_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            await reply(interaction, not_yours(str(self.owner_id)))
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: Exception, item) -> None:
        await report_error(interaction, error)


class ConfirmView(OwnerView):
    """Two buttons; `on_confirm(interaction)` runs on the first, the second says `declined`."""

    def __init__(self, owner_id: int, confirm: str, decline: str, declined: str,
                 on_confirm: Callable[[discord.Interaction], Awaitable[None]], danger: bool = False) -> None:
        super().__init__(owner_id)
        self.on_confirm, self.declined = on_confirm, declined
        style = discord.ButtonStyle.danger if danger else discord.ButtonStyle.success
        yes = discord.ui.Button(label=confirm, style=style)
        no = discord.ui.Button(label=decline, style=discord.ButtonStyle.secondary)
        yes.callback, no.callback = self._yes, self._no
        self.add_item(yes)
        self.add_item(no)

    async def _yes(self, interaction: discord.Interaction) -> None:
        self.stop()
        await self.on_confirm(interaction)

    async def _no(self, interaction: discord.Interaction) -> None:
        self.stop()
        await interaction.response.edit_message(content=self.declined, embed=None, view=None)


class ConsentView(OwnerView):
    """The first enrollment's consent, with the member's own words for who they are: *I agree* waits
    until they have chosen (a `subject` given with the command is chosen already)."""

    def __init__(self, owner_id: int, subjects: dict[str, str], chosen: str | None,
                 on_agree: Callable[[discord.Interaction, str], Awaitable[None]]) -> None:
        super().__init__(owner_id)
        self.subjects, self.chosen, self.on_agree = subjects, chosen, on_agree
        self.menu = discord.ui.Select(placeholder="Portraits should describe me as…", row=0)
        self.agree = discord.ui.Button(label="I agree", style=discord.ButtonStyle.success, row=1)
        no = discord.ui.Button(label="No thanks", style=discord.ButtonStyle.secondary, row=1)
        self.menu.callback, self.agree.callback, no.callback = self._choose, self._agree, self._no
        self.add_item(self.menu)
        self.add_item(self.agree)
        self.add_item(no)
        self._show_choice()

    def _show_choice(self) -> None:
        self.menu.options = [discord.SelectOption(label=label, value=value, default=value == self.chosen)
                             for value, label in self.subjects.items()]
        self.agree.disabled = self.chosen is None

    async def _choose(self, interaction: discord.Interaction) -> None:
        self.chosen = self.menu.values[0]
        self._show_choice()
        await interaction.response.edit_message(view=self)

    async def _agree(self, interaction: discord.Interaction) -> None:
        if self.chosen is None:
            await reply(interaction, "First choose how portraits should describe you, in the menu above.")
            return
        self.stop()
        await self.on_agree(interaction, self.chosen)

    async def _no(self, interaction: discord.Interaction) -> None:
        self.stop()
        await interaction.response.edit_message(content="No problem: nothing was stored.", embed=None, view=None)


class PagerView(OwnerView):
    """Previous/next through pages built by `render(page) -> (embed, files)`."""

    def __init__(self, owner_id: int, pages: int, render: Callable[[int], tuple[discord.Embed, list[discord.File]]]):
        super().__init__(owner_id)
        self.page, self.pages, self.render = 0, pages, render
        self.previous = discord.ui.Button(label="◀ Previous", style=discord.ButtonStyle.secondary)
        self.next = discord.ui.Button(label="Next ▶", style=discord.ButtonStyle.secondary)
        self.previous.callback = lambda interaction: self._turn(interaction, -1)
        self.next.callback = lambda interaction: self._turn(interaction, +1)
        self.add_item(self.previous)
        self.add_item(self.next)
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= self.pages - 1

    async def _turn(self, interaction: discord.Interaction, step: int) -> None:
        self.page = min(max(self.page + step, 0), self.pages - 1)
        self._update_buttons()
        embed, files = self.render(self.page)
        await interaction.response.edit_message(embed=embed, attachments=files, view=self)


TOGETHER_LABELS = {"ask": "Others may ask me for a picture together",
                   "always": "Anyone may put me in a picture together", "never": "Nobody may put me in a picture"}


class MeView(OwnerView):
    """/facechain me: how portraits describe the member, a menu to remove one photo (asking first) and a
    button to forget everything."""

    def __init__(self, owner_id: int, photos: list[tuple[int, str]],
                 on_remove: Callable[[discord.Interaction, int], Awaitable[None]],
                 on_forget: Callable[[discord.Interaction], Awaitable[None]],
                 subjects: dict[str, str] | None = None, subject: str | None = None, suggested: str | None = None,
                 on_subject: Callable[[discord.Interaction, str], Awaitable[None]] | None = None,
                 together: str | None = None,
                 on_together: Callable[[discord.Interaction, str], Awaitable[None]] | None = None) -> None:
        super().__init__(owner_id)
        self.on_remove = on_remove
        if subjects and on_subject is not None:
            words = discord.ui.Select(placeholder="Portraits describe me as…", options=[
                discord.SelectOption(label=label, value=value, default=value == subject,
                                     description="suggested from your photos" if value == suggested != subject
                                     else None)
                for value, label in subjects.items()])

            async def chosen(interaction: discord.Interaction) -> None:
                await on_subject(interaction, words.values[0])

            words.callback = chosen
            self.add_item(words)
        if on_together is not None:
            who = discord.ui.Select(placeholder="Pictures with other members…", options=[
                discord.SelectOption(label=label, value=value, default=value == together)
                for value, label in TOGETHER_LABELS.items()])

            async def together_chosen(interaction: discord.Interaction) -> None:
                await on_together(interaction, who.values[0])

            who.callback = together_chosen
            self.add_item(who)
        if photos:
            menu = discord.ui.Select(placeholder="Remove a photo…", options=[
                discord.SelectOption(label=f"Photo {number}", description=name[:100], value=str(number))
                for number, name in photos[:25]])
            menu.callback = lambda interaction: self._ask(interaction, int(menu.values[0]))
            self.add_item(menu)
        forget = discord.ui.Button(label="Forget me…", style=discord.ButtonStyle.danger)
        forget.callback = on_forget
        self.add_item(forget)

    async def _ask(self, interaction: discord.Interaction, number: int) -> None:
        async def confirmed(button_interaction: discord.Interaction) -> None:
            await self.on_remove(button_interaction, number)

        confirm = ConfirmView(self.owner_id, f"Remove photo {number}", "Keep it", "Nothing was removed.", confirmed,
                              danger=True)
        # On the panel itself, so no second panel with old numbers is left behind.
        await interaction.response.edit_message(
            content=f"Remove photo {number}? Your face model is then retrained on the others.", view=confirm)
