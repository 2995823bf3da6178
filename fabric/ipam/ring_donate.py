"""Space requests and donation (weave's ``ipam`` space transfer), a RingAllocator mixin.

A peer out of space asks the reachable peer with most free space (unicast ``space``);
the donor splits its largest free run and sends the new tokens plus each one's successor
(``donate``), or ``none``; the asker then tries the next donor."""

from __future__ import annotations

import bisect
import json
from typing import TYPE_CHECKING

from fabric.ipam.ring_guard import IpamData
from fabric.mesh.wire import FrameError

if TYPE_CHECKING:
    from fabric.ipam.ring_alloc import RingAllocator

__all__ = ["RingDonation"]


class RingDonation:
    # ---- space requests and donation --------------------------------------------------
    def request_space(self: RingAllocator) -> None:
        if self.requesting or self.ring.empty():
            return
        free = {p: f for p, f in self.ring.free_by_peer().items()
                if p != self.me and p not in self.refused and f > 1}
        reach = self.router.topology.reachable()
        free = {p: f for p, f in free.items() if p in reach}
        if not free:
            self.refused.clear()
            return
        donor = max(free, key=lambda p: (free[p], p))
        self.requesting = True
        self.stats["requests"] += 1
        self.channel.gossip_unicast(donor, b'{"op":"space"}')
        self._timer = self.router.env.call_later(self.retry, self._request_timeout)

    def _request_timeout(self: RingAllocator) -> None:
        self._timer = None
        self.requesting = False
        if self.free() == 0:
            self.request_space()

    def _donate(self: RingAllocator, to: int) -> list[int]:
        best: tuple[int, int, int] | None = None  # (length, lo, hi) of the largest free run
        for t, hi in self.owned():
            prev = t
            i = bisect.bisect_left(self.used, t)
            for a in [*self.used[i:bisect.bisect_left(self.used, hi)], hi]:
                if best is None or a - prev > best[0]:
                    best = (a - prev, prev, a)
                prev = a + 1
        if best is None or best[0] < 2:
            return []
        _, lo, hi = best
        mid = lo + (hi - lo) // 2
        holder = self.ring.owner_entry(mid)
        assert holder is not None and holder.peer == self.me
        end = self.ring.range_end(mid) if mid in self.ring.entries else self.ring.range_end(
            holder.token)
        tokens = [mid]
        if hi < end:
            self.ring.set_entry(hi, self.me, 0)
            tokens.append(hi)
        self.ring.set_entry(mid, to, hi - mid)
        tokens += self._refresh_free()
        self.stats["donated"] += 1
        return tokens

    def on_gossip_unicast(self: RingAllocator, src: int, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            op = msg["op"]
        except (ValueError, TypeError, KeyError) as exc:
            raise FrameError("bad-ipam-unicast") from exc
        if op == "space":
            tokens = self._donate(src) if not self.ring.empty() else []
            if tokens:
                self._changed(tokens)
                body = IpamData(self._with_next(tokens)).encode()
                self.channel.gossip_unicast(src, b'{"op":"donate","data":' + body + b"}")
            else:
                self.channel.gossip_unicast(src, b'{"op":"none"}')
        elif op == "ring":  # a ring holder answering our Paxos gossip (ring_consensus)
            self.on_gossip(src, json.dumps(msg.get("data", {})).encode())
        elif op == "donate":
            self.on_gossip(src, json.dumps(msg.get("data", {})).encode())
            self.refused.clear()
        elif op == "none":
            self.refused.add(src)
            self.requesting = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.request_space()
