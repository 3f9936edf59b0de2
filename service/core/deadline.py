"""A request's deadline, fixed when the request arrives and shared by every stage that may wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from niff_serve.core.errors import DeadlineExceeded

T = TypeVar("T")


class Deadline:
    def __init__(self, seconds: float, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.seconds = seconds
        self.expires = self.started + seconds

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tightened(self, seconds: float) -> Deadline:
        """This deadline, or an earlier one ``seconds`` from now when a client asks for less time."""
        expires = min(self.expires, time.monotonic() + seconds)
        return Deadline(expires - self.started, started=self.started)

    async def wait(self, awaitable: Awaitable[T], stage: str) -> T:
        """Await ``awaitable`` within the remaining time; 504 naming ``stage`` when it runs out."""
        task = asyncio.ensure_future(awaitable)
        try:
            return await asyncio.wait_for(task, max(self.remaining(), 0))
        except TimeoutError:
            raise self.exceeded(stage) from None

    def exceeded(self, stage: str) -> DeadlineExceeded:
        return DeadlineExceeded(f"request deadline of {self.seconds:.3g} s passed during {stage}")
