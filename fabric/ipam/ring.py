"""``ring`` IPAM: weave's ring allocator on the gossip mesh, behind :class:`fabric.api.IPAM`.

Mesh hand-over: a weave backend puts its running :class:`fabric.mesh.tcp.MeshNode`
in ``ctx.mesh`` (:class:`fabric.api.NetworkContext`) before ``IPAM.start``; the IPAM
then registers its ``ipam`` channel on that router and never stops the node. Without one, the
IPAM starts its own node from ``ipam_config`` and stops it in :meth:`stop`.

``ipam_config`` keys (all optional)::

    range: CIDR handed out (default: the network's CIDR)
    init: "consensus" | "consensus=N" | "seed=NAME,NAME" | "observer" (default: consensus=N,
          N = peers the hand-over mesh was told about + 1, as weave; own node: consensus=1)
    host / port: mesh bind address (own node only; default node public IP, 6783)
    peers: [HOST:PORT, ...] targets (own node only); password: mesh password
    gossip_interval: seconds (default 30); wait: seconds start() waits for the ring (30)

State: ``<state_dir>/ring.db`` (ring, allocations, Paxos claims) and, for an own
node, ``<state_dir>/mesh.db`` (name, targets) — sqlite, committed before answers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, summarize_address_range
from typing import Any

from fabric.api import (
    IPAM,
    Allocation,
    ChunksCallback,
    Handle,
    NetworkContext,
    Peer,
    PeerEvent,
    PeersCallback,
)
from fabric.errors import ConfigError, IPAMError, PoolExhausted
from fabric.ipam.ring_alloc import RingAllocator
from fabric.ipam.ring_status import ring_status
from fabric.mesh.db import MeshDB
from fabric.mesh.names import fmt_name, parse_name
from fabric.mesh.router import RouterConfig
from fabric.mesh.tcp import DEFAULT_PORT, MeshNode

__all__ = ["RingIPAM", "parse_init", "ranges_to_cidrs"]


def parse_init(text: str) -> tuple[str, int, list[int]]:
    """``consensus[=N]`` / ``seed=A,B`` / ``observer`` -> (mode, quorum size N, seeds)."""
    mode, _, arg = str(text).partition("=")
    if mode == "consensus":
        try:
            n = int(arg) if arg else 1
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"ipam init {text!r}: N must be a positive integer",
                              fix="use consensus=N with N the expected number of peers")
        return "consensus", n, []
    if mode == "seed":
        seeds = [parse_name(s) for s in arg.split(",") if s.strip()]
        if not seeds:
            raise ConfigError(f"ipam init {text!r} names no seed peer",
                              fix="use seed=NAME,NAME with peer names like 02:00:00:00:00:01")
        return "seed", 0, seeds
    if mode == "observer" and not arg:
        return "observer", 0, []
    raise ConfigError(f"ipam init {text!r} is invalid",
                      fix="use consensus[=N], seed=NAME,NAME... or observer")


def ranges_to_cidrs(ranges: list[tuple[int, int]]) -> tuple[IPv4Network, ...]:
    out: list[IPv4Network] = []
    for lo, hi in ranges:
        out.extend(summarize_address_range(IPv4Address(lo), IPv4Address(hi - 1)))
    return tuple(out)


class RingIPAM(IPAM):
    name = "ring"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        cfg: Mapping[str, Any] = ctx.spec.ipam_config
        unknown = set(cfg) - {"range", "init", "host", "port", "peers", "password",
                              "gossip_interval", "wait"}
        if unknown:
            raise ConfigError(f"unknown ipam_config field(s) {sorted(unknown)} for ring",
                              fix="see fabric.ipam.ring for the accepted fields")
        try:
            self.range = IPv4Network(cfg.get("range", str(ctx.spec.cidr)))
            self.wait = float(cfg.get("wait", 30))
            self.gossip_interval = float(cfg.get("gossip_interval", 30))
            self.port = int(cfg.get("port", DEFAULT_PORT))
        except ValueError as exc:
            raise ConfigError(f"ring ipam_config: {exc}",
                              fix="range is a CIDR, wait/gossip_interval/port numbers") from exc
        # No init given: weave's default, consensus among the peers the node was told about
        # (resolved in start() from a hand-over mesh's targets + itself), else consensus=1.
        self.init_given = "init" in cfg
        self.mode, self.quorum, self.seeds = parse_init(cfg.get("init", "consensus=1"))
        peers = cfg.get("peers", [])
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            raise ConfigError("ring ipam_config field 'peers' must be a list of HOST:PORT")
        self.peers, self.password = peers, cfg.get("password")
        self.host = str(cfg.get("host", ctx.node.public_ip))
        self.node: MeshNode | None = None
        self.own_node = False
        self.alloc: RingAllocator | None = None
        self.db: MeshDB | None = None
        self._known: dict[str, Peer] = {}
        self._on_peers: PeersCallback | None = None
        self._on_chunks: ChunksCallback | None = None
        self._my_chunks: tuple[IPv4Network, ...] = ()

    # ---- lifecycle --------------------------------------------------------------------
    def start(self, backend_data: Mapping[str, Any]) -> tuple[IPv4Network, ...]:
        if self.alloc is not None and self.node is not None:  # the agent retries start()
            return self._wait_ready(self.node)
        node = self.ctx.mesh
        if node is not None and not self.init_given:
            self.quorum = len(node.call(lambda: list(node.router.targets))) + 1
        if node is None:
            node = MeshNode(host=self.host, port=self.port, nickname=self.ctx.node.name,
                            password=self.password, db=MeshDB(self.ctx.state_dir / "mesh.db"),
                            config=RouterConfig(gossip_interval=self.gossip_interval))
            self.own_node = True
        self.node = node
        self.db = MeshDB(self.ctx.state_dir / "ring.db")
        start, end = int(self.range.network_address) + 1, int(self.range.broadcast_address)
        self.alloc = node.call(lambda: RingAllocator(
            node.router, start, end, mode=self.mode, quorum=self.quorum // 2 + 1 or 1,
            seeds=self.seeds, db=self.db))
        if self.own_node:
            node.start()
            if self.peers:
                node.connect(self.peers)
        node.call(self.alloc.start)
        return self._wait_ready(node)

    def _wait_ready(self, node: MeshNode) -> tuple[IPv4Network, ...]:
        t0 = time.monotonic()
        deadline = t0 + self.wait
        while not node.call(self.alloc.ready):
            if time.monotonic() > deadline:
                try:
                    node.call(self.alloc.require_ready)
                except IPAMError as exc:
                    st = node.call(self.alloc.describe)
                    raise IPAMError(f"the IPAM ring is not ready after {self.wait:.0f}s "
                                    f"(init {self.mode}, consensus {st['consensus']}): "
                                    f"{exc.message}",
                                    fix=exc.fix) from None
            time.sleep(0.05)
        self.ctx.log.info("ring ipam: ring %s ready after %.2fs (init %s%s)",
                          node.call(lambda: self.alloc.ring.ring_id), time.monotonic() - t0,
                          self.mode, f"={self.quorum}" if self.mode == "consensus" else "")
        return self.chunks()

    def subscribe(self, on_peers: PeersCallback, on_chunks: ChunksCallback | None = None) -> None:
        """Peer events on topology or ring changes; ``on_chunks`` when our ranges change
        (a donation given or received). Both run on the mesh thread."""
        assert self.node is not None and self.alloc is not None
        self._on_peers, self._on_chunks = on_peers, on_chunks
        self._my_chunks = self.chunks()

        def hook() -> None:
            self.node.router.on_peers_changed.append(self._peers_changed)
            self.alloc.on_change.append(self._peers_changed)
            self._peers_changed()
        self.node.call(hook)

    def _peers_changed(self) -> None:  # on the loop thread
        assert self.node is not None and self.alloc is not None
        router = self.node.router
        owned: dict[int, list[tuple[int, int]]] = {}
        for t in self.alloc.ring.tokens:
            owned.setdefault(self.alloc.ring.entries[t].peer, []).append(
                (t, self.alloc.ring.range_end(t)))
        now: dict[str, Peer] = {}
        addr: dict[int, str] = {}
        for rec in router.topology.records.values():
            for p, a, outbound in rec.conns:
                if outbound:
                    addr.setdefault(p, a.rpartition(":")[0])
        for name in router.topology.reachable() - {router.name}:
            try:
                ip = IPv4Address(addr.get(name, "0.0.0.0"))
            except ValueError:
                ip = IPv4Address(0)
            now[fmt_name(name)] = Peer(fmt_name(name), ip, ranges_to_cidrs(owned.get(name, [])),
                                       self.ctx.spec.backend, {"nickname":
                                                               router.peer_nickname(name)})
        mine = ranges_to_cidrs(self.alloc.owned())
        if mine != self._my_chunks:
            self._my_chunks = mine
            if self._on_chunks is not None:
                try:
                    self._on_chunks(mine)
                except Exception:
                    self.ctx.log.exception("ring ipam: chunks callback failed")
        events = [PeerEvent("added", p) for k, p in now.items() if self._known.get(k) != p]
        events += [PeerEvent("removed", p) for k, p in self._known.items() if k not in now]
        self._known = now
        if events and self._on_peers is not None:
            try:
                self._on_peers(events)
            except Exception:  # a failing backend is logged, never fatal
                self.ctx.log.exception("ring ipam: peers callback failed")

    def chunks(self) -> tuple[IPv4Network, ...]:
        assert self.node is not None and self.alloc is not None
        return ranges_to_cidrs(self.node.call(self.alloc.owned))

    def allocate(self, handle: Handle, requested: IPv4Address | None = None,
                 timeout: float = 30.0) -> Allocation:
        assert self.node is not None and self.alloc is not None
        deadline = time.monotonic() + timeout
        if requested is not None:  # exactly that address: it must be in a range we own
            owned = self.chunks()
            if not any(requested in c for c in owned):
                raise ConfigError(
                    f"requested address {requested} is outside the ranges this peer owns "
                    f"({', '.join(map(str, owned)) or 'none yet'})",
                    fix="request an address this peer owns, or none", field="ips")
            held = self.node.call(lambda: self.alloc.allocs.get(handle.key()))
            if held is not None and held != int(requested):
                raise IPAMError(f"{handle.key()} already holds {IPv4Address(held)}, not the "
                                f"requested {requested}", fix="delete the attachment first")
            addr = self.node.call(self.alloc.claim, handle.key(), int(requested))
            if addr is None:
                raise IPAMError("the IPAM ring is not ready yet", fix="retry")
            return self._allocation(handle, addr)
        while True:
            addr = self.node.call(self.alloc.try_allocate, handle.key())
            if addr is not None:
                return self._allocation(handle, addr)
            if time.monotonic() > deadline:
                raise PoolExhausted(f"no free address for {handle.key()} in {self.range} "
                                    f"after {timeout:.0f}s: no peer donated space",
                                    fix="check `fabric status` IPAM owners and reachability")
            time.sleep(0.05)

    def _allocation(self, handle: Handle, addr: int) -> Allocation:
        ip = IPv4Address(addr)
        chunk = next((c for c in self.chunks() if ip in c), IPv4Network(f"{ip}/32"))
        return Allocation(handle, ip, chunk)

    def release(self, handle: Handle) -> Allocation | None:
        assert self.node is not None and self.alloc is not None
        before = self.node.call(lambda: self.alloc.allocs.get(handle.key()))
        if before is None:
            return None
        alloc = self._allocation(handle, before)
        self.node.call(self.alloc.release, handle.key())
        return alloc

    def allocations(self) -> dict[Handle, Allocation]:
        assert self.node is not None and self.alloc is not None
        allocs = self.node.call(lambda: dict(self.alloc.allocs))
        return {Handle.from_key(k): self._allocation(Handle.from_key(k), a)
                for k, a in allocs.items()}

    def rmpeer(self, name: str) -> int:
        assert self.node is not None and self.alloc is not None
        return self.node.call(self.alloc.rmpeer, parse_name(name))

    def status(self) -> dict[str, Any]:
        if self.node is None or self.alloc is None:
            return {"ipam": "ring", "running": False}
        return self.node.call(lambda: ring_status(self.node.router, self.alloc,
                                                  encryption=bool(self.node.password)))

    def stop(self) -> None:
        if self.alloc is not None and self.node is not None:
            self.node.call(self.alloc.stop)
        if self.own_node and self.node is not None:
            self.node.stop()
        if self.db is not None:
            self.db.close()
            self.db = None

    def teardown(self) -> None:
        if self.alloc is not None and self.node is not None:
            try:
                self.node.call(self.alloc.reset)
                time.sleep(0.2)  # let the hand-over leave before the node stops
            except IPAMError as exc:
                self.ctx.log.warning("ring ipam: reset: %s", exc)
        self.stop()
        for f in ("ring.db", "ring.db-wal", "ring.db-shm"):
            (self.ctx.state_dir / f).unlink(missing_ok=True)
