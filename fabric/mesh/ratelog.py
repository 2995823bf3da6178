"""Rate-limited logging: one line per (reason, peer) per interval, with a suppressed count.

A hostile or broken peer can trigger the same refusal many times a second; the log
must say it happened (and from where) without letting that peer fill the disk."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        self.logger, self.interval, self.clock, self.max_keys = logger, interval, clock, max_keys
        self._last: OrderedDict[tuple[str, str], list[float]] = OrderedDict()  # [when, count]

    def __call__(self, level: int, reason: str, peer: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless (reason, peer) was logged less than ``interval`` ago;
        True when a line was written."""
        key, now = (reason, peer), self.clock()
        st = self._last.get(key)
        if st is not None and now - st[0] < self.interval:
            st[1] += 1
            return False
        if st is not None and st[1]:
            msg, args = msg + " (%d similar suppressed)", (*args, int(st[1]))
        self._last[key] = [now, 0]
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        self.logger.log(level, msg, *args)
        return True
