"""The transport-independent mesh router: connections, topology, gossip relay, targets.

The router is single-threaded: an :class:`Env` (the simulator or the asyncio
transport in ``fabric.mesh.tcp``) calls ``add_connection`` / ``remove_connection``
/ ``handle_frame`` / ``dial_failed`` and runs the timers it asks for. Connections
are objects with ``remote``, ``remote_nickname``, ``address``, ``outbound``,
``send(bytes)`` and ``close(reason)``; ``remote_uid`` (the remote incarnation) when known.

Name collisions (two live peers with one name): :mod:`fabric.mesh.collision`;
targets with backoff: :mod:`fabric.mesh.targets`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from fabric.errors import ConfigError
from fabric.mesh.collision import NameCollisions
from fabric.mesh.gossip import GossipChannel, GossipData, Gossiper
from fabric.mesh.names import fmt_name
from fabric.mesh.ratelog import RateLimitedLog
from fabric.mesh.targets import Target, Targets
from fabric.mesh.topology import PeerRecord, Topology, TopologyUpdate
from fabric.mesh.wire import (
    BROADCAST,
    CLOSE,
    GOSSIP,
    UNICAST,
    Frame,
    FrameError,
    encode_frame,
)

_log = logging.getLogger("fabric.mesh")

__all__ = ["Env", "Timer", "Connection", "RouterConfig", "Router", "TOPOLOGY"]

TOPOLOGY = "topology"


class Timer(Protocol):
    def cancel(self) -> Any: ...


class Env(Protocol):
    def now(self) -> float: ...
    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer: ...
    def dial(self, router: Router, address: str) -> None: ...


class Connection(Protocol):
    remote: int
    remote_nickname: str
    address: str
    outbound: bool

    def send(self, data: bytes) -> None: ...
    def close(self, reason: str) -> None: ...


@attrs.define
class RouterConfig:
    gossip_interval: float = 30.0  # periodic full gossip (weave: 30 s)
    relay_delay: float = 0.05  # coalescing window for delta relay (one "round")
    fanout: int = 0  # 0: ceil(log2(known peers))
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    log_interval: float = 60.0  # one log line per (reason, peer) per interval


class _TopologyGossiper(Gossiper):
    def __init__(self, router: Router) -> None:
        self.router = router

    def gossip(self) -> GossipData:
        return self.router.topology.full()

    def on_gossip(self, sender: int, payload: bytes) -> GossipData | None:
        update = TopologyUpdate.decode(payload)
        r = self.router
        r._check_own_record(update, sender)
        if r._stopped:
            return None
        delta = r.topology.apply(update)
        if delta.records:
            self.router._topology_changed()
            return delta
        return None


class Router(NameCollisions, Targets):
    def __init__(self, name: int, nickname: str, env: Env, config: RouterConfig | None = None,
                 *, version: int = 1, uid: int | None = None,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.nickname = nickname
        self.env = env
        self.cfg = config or RouterConfig()
        self.rng = rng or random.Random()
        self.uid = uid if uid is not None else self.rng.getrandbits(62)
        self.version = version
        self.conns: dict[int, Connection] = {}
        self.targets: dict[str, Target] = {}
        self.channels: dict[str, GossipChannel] = {}
        self.topology = Topology(self._record())
        self.stats: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.on_targets_changed: Callable[[list[str]], None] | None = None
        self.on_peers_changed: list[Callable[[], None]] = []
        self._pending: dict[str, GossipData] = {}
        self._flush_timer: Any = None
        self._periodic: Any = None
        self._stopped = False
        self._seen: OrderedDict[bytes, None] = OrderedDict()  # digests of merged payloads
        self.log = RateLimitedLog(_log, self.cfg.log_interval, env.now)
        self.name_collision: dict[str, Any] | None = None  # set when we yielded our name
        self.collisions: dict[int, dict[str, Any]] = {}  # other uids seen with our name
        self.new_gossip(TOPOLOGY, _TopologyGossiper(self))

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        jitter = self.rng.uniform(0.5, 1.0) * self.cfg.gossip_interval
        self._periodic = self.env.call_later(jitter, self._periodic_gossip)
        for t in self.targets.values():
            if t.state == "pending":
                self._dial(t)

    def stop(self) -> None:
        self._stopped = True
        for timer in (self._periodic, self._flush_timer,
                      *(t.timer for t in self.targets.values())):
            if timer is not None:
                timer.cancel()
        for conn in list(self.conns.values()):
            conn.close("router stopped")
        self.conns.clear()

    # ---- channels ---------------------------------------------------------------------
    def new_gossip(self, channel: str, gossiper: Gossiper) -> GossipChannel:
        """Register ``gossiper`` on ``channel``; a name already taken is a ConfigError
        (a second registration would silently steal the first one's traffic)."""
        if channel in self.channels:
            raise ConfigError(f"gossip channel {channel!r} is already registered on this mesh "
                              "peer", fix="use one channel name per gossiper (e.g. one ring "
                              "IPAM per mesh node)")
        ch = GossipChannel(self, channel, gossiper)
        self.channels[channel] = ch
        return ch

    # ---- connections ------------------------------------------------------------------
    def _record(self) -> PeerRecord:
        conns = tuple(sorted((p, c.address, c.outbound) for p, c in self.conns.items()))
        return PeerRecord(self.name, self.nickname, self.uid, self.version, conns)

    def add_connection(self, conn: Connection) -> bool:
        """Register an established connection; False (and closed) if it is a duplicate."""
        t = self.targets.get(conn.address) if conn.outbound else None
        if self._same_name_other_uid(conn, t):
            return False
        if self._stopped or conn.remote == self.name:
            conn.close("connection to ourself" if conn.remote == self.name else "stopped")
            if t is not None and not self._stopped:
                t.state, t.last_error = "failed", "connection to ourself"  # not retried
            return False
        if t is not None:
            t.state, t.failures, t.last_error, t.peer = "established", 0, "", conn.remote
        old = self.conns.get(conn.remote)
        if old is not None:
            verdict = self._two_peers_one_name(old, conn)
            if verdict == "refused":  # the new connection is the later incarnation
                return False
            if verdict == "replaced":
                old = None
                self.conns.pop(conn.remote, None)
        if old is not None:
            # keep the connection initiated by the lower name; both ends agree
            keep_new = (self.name if conn.outbound else conn.remote) < (
                self.name if old.outbound else old.remote)
            if not keep_new:
                conn.close("duplicate connection")
                return False
            old.close("duplicate connection")
        self.conns[conn.remote] = conn
        self.stats["connections_added"] += 1
        self._self_changed()
        for name, ch in self.channels.items():  # new neighbour gets everything
            data = ch.gossiper.gossip()
            if data is not None:
                self._send(conn, Frame(GOSSIP, name, self.name, 0, data.encode()))
        return True

    def remove_connection(self, conn: Connection, reason: str) -> None:
        if self.conns.get(conn.remote) is not conn:
            return
        del self.conns[conn.remote]
        self.stats["connections_lost"] += 1
        self._redial_served_by(conn.remote, reason)
        self._self_changed()

    def _self_changed(self) -> None:
        self.version += 1
        rec = self._record()
        self.topology.update_self(rec)
        self.topology.gc()
        self._relay(TOPOLOGY, TopologyUpdate({rec.name: rec}))
        self._topology_changed()

    def _topology_changed(self) -> None:
        for cb in self.on_peers_changed:
            cb()

    # ---- frames -----------------------------------------------------------------------
    def _send(self, conn: Connection, frame: Frame) -> None:
        data = encode_frame(frame)
        self.stats["msgs_sent"] += 1
        self.stats["bytes_sent"] += len(data)
        conn.send(data)

    def handle_frame(self, conn: Connection, frame: Frame, size: int = 0) -> None:
        """Dispatch one decoded frame; hostile content is counted, never raised."""
        self.stats["msgs_recv"] += 1
        self.stats["bytes_recv"] += size
        if frame.type == CLOSE:
            self._on_close_frame(conn, frame.payload)
            return
        ch = self.channels.get(frame.channel)
        if frame.type in (GOSSIP, BROADCAST, UNICAST) and ch is None:
            self.rejected["unknown-channel"] += 1
            return
        try:
            if frame.type == GOSSIP:
                # merges are idempotent: a payload merged before cannot add anything
                digest = hashlib.blake2b(frame.payload, digest_size=16,
                                         person=frame.channel.encode()[:16]).digest()
                if digest in self._seen:
                    self._seen.move_to_end(digest)
                    self.stats["gossip_repeats"] += 1
                    return
                delta = ch.gossiper.on_gossip(conn.remote, frame.payload)
                self._seen[digest] = None
                if len(self._seen) > 256:
                    self._seen.popitem(last=False)
                if delta is not None:
                    self._relay(frame.channel, delta)
            elif frame.type == BROADCAST:
                if frame.src == self.name:
                    return
                for hop in self.topology.broadcast_hops(frame.src):
                    c = self.conns.get(hop)
                    if c is not None and hop != conn.remote:
                        self._send(c, frame)
                ch.gossiper.on_gossip_broadcast(frame.src, frame.payload)
            elif frame.type == UNICAST:
                if frame.dst == self.name:
                    ch.gossiper.on_gossip_unicast(frame.src, frame.payload)
                else:
                    self._forward(frame)
        except FrameError as exc:
            self.rejected[exc.reason] += 1
        except Exception:  # a handler bug must not take the peer down: count and log
            self.rejected["handler-error"] += 1
            _log.exception("mesh: %s handler failed on a frame from %s", frame.channel,
                           fmt_name(conn.remote))

    def _forward(self, frame: Frame) -> bool:
        hop = self.topology.unicast_routes().get(frame.dst)
        conn = self.conns.get(hop) if hop is not None else None
        if conn is None:
            self.stats["unicast_dropped"] += 1
            return False
        self._send(conn, frame)
        return True

    # ---- GossipSender -----------------------------------------------------------------
    def _relay(self, channel: str, data: GossipData) -> None:
        cur = self._pending.get(channel)
        self._pending[channel] = data if cur is None else cur.merge(data)
        if self._flush_timer is None and not self._stopped:
            self._flush_timer = self.env.call_later(self.cfg.relay_delay, self._flush)

    def fanout(self) -> int:
        if self.cfg.fanout:
            return self.cfg.fanout
        return max(1, math.ceil(math.log2(max(2, len(self.topology.records)))))

    def _random_neighbours(self) -> list[Connection]:
        conns = list(self.conns.values())
        k = self.fanout()
        return conns if len(conns) <= k else self.rng.sample(conns, k)

    def _flush(self) -> None:
        self._flush_timer = None
        pending, self._pending = self._pending, {}
        targets = self._random_neighbours()
        for channel, data in pending.items():
            payload = data.encode()
            for c in targets:
                self._send(c, Frame(GOSSIP, channel, self.name, 0, payload))

    def _periodic_gossip(self) -> None:
        if self._stopped:
            return
        targets = self._random_neighbours()
        for name, ch in self.channels.items():
            data = ch.gossiper.gossip()
            if data is None:
                continue
            payload = data.encode()
            for c in targets:
                self._send(c, Frame(GOSSIP, name, self.name, 0, payload))
        delay = self.cfg.gossip_interval * self.rng.uniform(0.9, 1.1)
        self._periodic = self.env.call_later(delay, self._periodic_gossip)

    def _broadcast(self, channel: str, payload: bytes) -> None:
        frame = Frame(BROADCAST, channel, self.name, 0, payload)
        for hop in self.topology.broadcast_hops(self.name):
            c = self.conns.get(hop)
            if c is not None:
                self._send(c, frame)

    def _unicast(self, channel: str, dst: int, payload: bytes) -> bool:
        frame = Frame(UNICAST, channel, self.name, dst, payload)
        if dst == self.name:
            self.channels[channel].gossiper.on_gossip_unicast(self.name, payload)
            return True
        return self._forward(frame)

    # ---- status -----------------------------------------------------------------------
    def peer_nickname(self, name: int) -> str:
        rec = self.topology.records.get(name)
        return rec.nickname if rec else ""

    def describe(self) -> dict[str, Any]:
        routes = self.topology.unicast_routes()
        peers = []
        for name, rec in sorted(self.topology.records.items()):
            peers.append({"name": fmt_name(name), "nickname": rec.nickname,
                          "version": rec.version, "reachable": name in routes,
                          "connections": [{"peer": fmt_name(p), "address": a,
                                           "outbound": o} for p, a, o in rec.conns]})
        conns = [{"peer": fmt_name(c.remote), "nickname": c.remote_nickname,
                  "address": c.address, "outbound": c.outbound, "state": "established"}
                 for c in self.conns.values()]
        for t in self.targets.values():
            if t.state != "established":
                conns.append({"peer": "", "nickname": "", "address": t.address,
                              "outbound": True, "state": t.state, "error": t.last_error})
        return {"name": fmt_name(self.name), "nickname": self.nickname,
                "name_collision": self.name_collision,
                "collisions": [{**c, "uid": str(c["uid"])} for c in self.collisions.values()],
                "peers": peers, "connections": conns, "targets": sorted(self.targets),
                "stats": dict(self.stats), "rejected": dict(self.rejected)}
