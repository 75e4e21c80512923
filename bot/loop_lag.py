"""How late the bot's event loop runs: a task asks to wake every 100 ms and records how much later
it actually woke. Anything blocking the loop (a slow call, a long computation) shows up here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

log = logging.getLogger("bot")
TICK_SECONDS = 0.1
REPORT_EVERY_SECONDS = 300.0


class LoopLag:
    def __init__(self, keep: int = 20_000) -> None:
        self.samples: deque[float] = deque(maxlen=keep)  # seconds late, newest last

    async def run(self) -> None:
        last_report = time.monotonic()
        while True:
            asked = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)
            self.samples.append(max(0.0, time.monotonic() - asked - TICK_SECONDS))
            if time.monotonic() - last_report >= REPORT_EVERY_SECONDS:
                self.report()
                last_report = time.monotonic()

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"samples": 0}

        def at(share: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1)
        return {"samples": len(ordered), "lag_p50_ms": at(0.5), "lag_p99_ms": at(0.99),
                "lag_max_ms": round(ordered[-1] * 1000, 1)}

    def report(self) -> None:
        log.info("event loop lag", extra=self.summary())
