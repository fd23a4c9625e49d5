"""Hands a step's outputs to the request coroutines: one wake-up of each event loop per step, not one per token.

Every call_soon_threadsafe writes to the loop's self-pipe and wakes its thread, which then competes for the
GIL (and a core) with the scheduler thread and the two compute threads. With 16 streams that was 16
wake-ups a step; now it is one, after the step's sampling is done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class Outbox:
    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[Any], None], Any]]] = {}
        self._lock = threading.Lock()

    def post(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[Any], None], item: Any) -> None:
        with self._lock:
            self._pending.setdefault(loop, []).append((deliver, item))

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # that loop is closed: its requests are gone
                pass


def _deliver_all(items: list[tuple[Callable[[Any], None], Any]]) -> None:
    for deliver, item in items:
        deliver(item)
