"""Per-peer path health from heartbeats: a small state machine without sockets.

Each side sends every ``interval`` seconds a heartbeat saying whether it currently hears the
other ("I hear you"), so both learn whether the path works *both* ways (weave sleeve's
per-peer UDP heartbeats decide "sleeve established" the same way). States:

- ``pending``: added less than ``interval * misses`` ago and not yet established;
- ``established``: heard within ``interval * misses`` and the peer's last heartbeat said it
  hears us;
- ``unreachable``: anything else (nothing heard for ``misses`` intervals, or one way only).

RTT: a heartbeat echoes the sequence number of the last one heard and how long it held it.
The engine carries heartbeats as routed control messages (sealed when encryption is on), the
weave-fastdp backend may carry them on its own socket: this class only encodes, decodes and
keeps time. Thread-safe (rx thread reports, timer thread sends and ticks).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Hashable, Iterable

from fabric.errors import ConfigError

__all__ = ["PathHealth", "encode", "decode", "PAYLOAD_LEN"]

VERSION = 1
F_HEAR_YOU = 1
_P = struct.Struct("!BBIII")  # version, flags, seq, echo seq, echo hold time (us)
PAYLOAD_LEN = _P.size
_KEEP_SENT = 16  # send times kept per peer for the RTT

ChangeCallback = Callable[[Hashable, str, str], None]


def encode(seq: int, hear_you: bool, echo: int, hold_us: int) -> bytes:
    return _P.pack(VERSION, F_HEAR_YOU if hear_you else 0, seq & 0xFFFFFFFF, echo & 0xFFFFFFFF,
                   min(max(hold_us, 0), 0xFFFFFFFF))


def decode(payload) -> tuple[int, bool, int, int] | None:
    """(seq, hear_you, echo seq, hold us), or None for anything that is not a heartbeat."""
    if len(payload) != PAYLOAD_LEN:
        return None
    version, flags, seq, echo, hold = _P.unpack_from(payload)
    if version != VERSION or flags & ~F_HEAR_YOU:
        return None
    return seq, bool(flags & F_HEAR_YOU), echo, hold


class _Peer:
    __slots__ = ("added", "last_heard", "hears_us", "seq", "sent", "echo", "echo_at", "rtt",
                 "state", "last_sent")

    def __init__(self, now: float) -> None:
        self.added = now
        self.last_heard = 0.0
        self.hears_us = False
        self.seq = 0
        self.sent: dict[int, float] = {}
        self.echo = 0  # last seq heard from the peer
        self.echo_at = 0.0
        self.rtt: float | None = None
        self.state = "pending"
        self.last_sent = float("-inf")  # the first heartbeat goes at once


class PathHealth:
    """Heartbeat bookkeeping for a set of peers (keys: any hashable peer name)."""

    def __init__(self, interval: float = 1.0, misses: int = 3,
                 on_change: ChangeCallback | None = None) -> None:
        if not 0.01 <= interval <= 60 or not 1 <= misses <= 100:
            raise ConfigError(f"heartbeat interval {interval} s / misses {misses} out of range",
                              fix="interval 0.01-60 s, misses 1-100 (defaults 1 s and 3)")
        self.interval = interval
        self.misses = misses
        self.on_change = on_change
        self._lock = threading.Lock()
        self._peers: dict[Hashable, _Peer] = {}

    @property
    def dead_after(self) -> float:
        return self.interval * self.misses

    def set_peers(self, names: Iterable[Hashable], now: float | None = None) -> None:
        """Track exactly ``names``: new ones start pending, gone ones are forgotten."""
        t = time.monotonic() if now is None else now
        wanted = set(names)
        with self._lock:
            for name in [n for n in self._peers if n not in wanted]:
                del self._peers[name]
            for name in wanted:
                if name not in self._peers:
                    self._peers[name] = _Peer(t)

    def outgoing(self, now: float | None = None) -> list[tuple[Hashable, bytes]]:
        """Heartbeats due now: (peer, payload) for every peer not sent to for ``interval``."""
        t = time.monotonic() if now is None else now
        out = []
        with self._lock:
            for name, p in self._peers.items():
                if t - p.last_sent < self.interval:
                    continue
                p.last_sent = t
                p.seq = (p.seq + 1) & 0xFFFFFFFF
                p.sent[p.seq] = t
                if len(p.sent) > _KEEP_SENT:
                    del p.sent[next(iter(p.sent))]
                hold = int((t - p.echo_at) * 1e6) if p.echo else 0
                out.append((name, encode(p.seq, self._hears(p, t), p.echo, hold)))
        return out

    def received(self, name: Hashable, payload, now: float | None = None) -> str:
        """A heartbeat from ``name``; returns '' or the drop reason."""
        beat = decode(payload)
        if beat is None:
            return "bad_heartbeat"
        t = time.monotonic() if now is None else now
        seq, hears_us, echo, hold = beat
        changed = None
        with self._lock:
            p = self._peers.get(name)
            if p is None:
                return "unknown_peer"
            p.last_heard = t
            p.hears_us = hears_us
            p.echo, p.echo_at = seq, t
            sent = p.sent.get(echo)
            if sent is not None:
                rtt = t - sent - hold / 1e6
                if rtt >= 0:
                    p.rtt = rtt
            changed = self._update(name, p, t)
        self._notify(changed)
        return ""

    def tick(self, now: float | None = None) -> list[tuple[Hashable, str, str]]:
        """Re-evaluate every peer (call about once per interval); returns the changes."""
        t = time.monotonic() if now is None else now
        with self._lock:
            changes = [c for name, p in self._peers.items() if (c := self._update(name, p, t))]
        for c in changes:
            self._notify(c)
        return changes

    def _hears(self, p: _Peer, now: float) -> bool:
        return p.last_heard > 0 and now - p.last_heard <= self.dead_after

    def _update(self, name: Hashable, p: _Peer, now: float) -> tuple[Hashable, str, str] | None:
        if self._hears(p, now) and p.hears_us:
            state = "established"
        elif p.state == "pending" and now - p.added < self.dead_after:
            state = "pending"
        else:
            state = "unreachable"
        if state == p.state:
            return None
        old, p.state = p.state, state
        return name, old, state

    def _notify(self, change: tuple[Hashable, str, str] | None) -> None:
        if change and self.on_change is not None:
            self.on_change(*change)

    def state(self, name: Hashable) -> str | None:
        p = self._peers.get(name)
        return p.state if p else None

    def health(self, now: float | None = None) -> dict[Hashable, dict]:
        """{peer: {"state", "last_heard" (seconds ago or None), "rtt_ms" (or None)}}."""
        t = time.monotonic() if now is None else now
        with self._lock:
            return {name: {"state": p.state,
                           "last_heard": round(t - p.last_heard, 2) if p.last_heard else None,
                           "rtt_ms": round(p.rtt * 1000, 3) if p.rtt is not None else None}
                    for name, p in self._peers.items()}
