"""The weave control plane of one network on one node: the gossip mesh and what rides on it.

:class:`WeaveControl` runs a :class:`fabric.mesh.tcp.MeshNode` (TCP ``MeshPort``, password
from ``PasswordFile``), connects to ``Peers`` plus the targets saved from the last run
(weave's ``--resume``), gossips this node's :class:`~fabric.weave.peerinfo.PeerInfo`, and
hands data paths a consistent :class:`MeshView` whenever the topology or a record changes.
The ``ring`` IPAM and weaveDNS register their own channels on the same node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import attrs

from fabric.api import NetworkContext
from fabric.mesh.db import MeshDB
from fabric.mesh.names import fmt_name
from fabric.mesh.router import RouterConfig
from fabric.mesh.tcp import MeshNode
from fabric.weave.options import WeaveOptions
from fabric.weave.peerinfo import CHANNEL, PeerInfo, PeerInfoGossiper

__all__ = ["MeshView", "WeaveControl"]


@attrs.frozen
class MeshView:
    """A snapshot of the mesh as the data paths need it (names are 48-bit ints)."""

    me: int
    reachable: frozenset[int]
    neighbours: frozenset[int]  # symmetric direct connections
    unicast: dict[int, int] = attrs.field(hash=False)  # dst -> next hop (direct: dst)
    broadcast: dict[int, tuple[int, ...]] = attrs.field(hash=False)  # origin -> our children
    infos: dict[int, PeerInfo] = attrs.field(hash=False)  # valid records of reachable peers
    nicknames: dict[int, str] = attrs.field(hash=False)


class WeaveControl:
    def __init__(self, ctx: NetworkContext, opts: WeaveOptions,
                 log: logging.Logger | None = None) -> None:
        self.ctx, self.opts = ctx, opts
        self.log = log or ctx.log
        self.node: MeshNode | None = None
        self.db: MeshDB | None = None
        self.info: PeerInfoGossiper | None = None
        self._channel: Any = None
        self._listeners: list[Callable[[MeshView], None]] = []
        self._own: dict[str, Any] = {}
        self.view: MeshView | None = None

    # ---- lifecycle (agent thread) -----------------------------------------------------
    def start(self) -> MeshNode:
        if self.node is not None:  # the agent retries a network's start: keep the mesh
            return self.node
        self.db = MeshDB(self.ctx.state_dir / "mesh.db")
        node = MeshNode(host=str(self.ctx.node.public_ip), port=self.opts.mesh_port,
                        nickname=self.ctx.node.name, password=self.opts.password, db=self.db,
                        config=RouterConfig(gossip_interval=30.0))
        self.info = PeerInfoGossiper(node.name, self.ctx.spec.cidr, self.ctx.node.public_ip)
        self._channel = node.router.new_gossip(CHANNEL, self.info)
        self.info.on_change.append(self._changed)
        node.router.on_peers_changed.append(self._changed)
        self.node = node
        node.start()
        if self.opts.peers:
            node.connect(self.opts.targets())
        self.log.info("weave mesh %s (%s) listening on TCP %s; encryption %s; peers %s",
                      fmt_name(node.name), self.ctx.node.name, node.address,
                      "on" if self.opts.password else "off",
                      ", ".join(self.opts.targets()) or "none (waiting for connections)")
        return node

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None
        if self.db is not None:
            self.db.close()
            self.db = None

    def teardown(self) -> None:
        self.stop()
        for suffix in ("", "-wal", "-shm"):
            (self.ctx.state_dir / f"mesh.db{suffix}").unlink(missing_ok=True)

    # ---- our record -------------------------------------------------------------------
    def publish(self, **fields: Any) -> None:
        """Set fields of our PeerInfo (``data_port``, ``fastdp_port``, ``public_key``,
        ``vtep_mac``) and gossip it with a new version."""
        assert self.node is not None and self.info is not None
        self._own.update(fields)
        info, channel, node = self.info, self._channel, self.node

        def run() -> None:
            cur = info.get(node.name)
            version = max(time.time_ns() // 1000, (cur.version + 1) if cur else 0)
            rec = PeerInfo(node.name, version, self.ctx.node.public_ip,
                           self._own.get("data_port", self.opts.data_port),
                           self._own.get("fastdp_port", 0), self._own.get("public_key", b""),
                           self._own.get("vtep_mac", ""))
            channel.gossip_broadcast(info.publish(rec))
        node.call(run)

    # ---- views ------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[MeshView], None]) -> None:
        """``fn(view)`` now and after every change, on the mesh thread. Must be quick."""
        assert self.node is not None
        self._listeners.append(fn)

        def first() -> None:
            view = self.view or self._compute()
            fn(view)
        self.node.call(first)

    def soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the mesh thread without waiting (safe while holding other locks)."""
        node = self.node
        if node is not None:
            node.loop.call_soon_threadsafe(fn)

    def _compute(self) -> MeshView:
        assert self.node is not None and self.info is not None
        router = self.node.router
        topo = router.topology
        unicast = dict(topo.unicast_routes())
        reachable = frozenset(unicast) - {router.name}
        neighbours = frozenset(topo.neighbours(router.name))
        bcast = {o: tuple(topo.broadcast_hops(o)) for o in (reachable | {router.name})}
        infos = {n: r for n, r in self.info.state.records.items() if n in reachable}
        nicks = {n: router.peer_nickname(n) for n in reachable}
        view = MeshView(router.name, reachable, neighbours, unicast, bcast, infos, nicks)
        self.view = view
        return view

    def _changed(self) -> None:  # mesh thread
        view = self._compute()
        for fn in list(self._listeners):
            try:
                fn(view)
            except Exception:
                self.log.exception("weave: a data path failed to take the new mesh view")

    # ---- operations -------------------------------------------------------------------
    def connect(self, hosts: list[str]) -> list[str]:
        assert self.node is not None
        targets = [h if ":" in h else f"{h}:{self.opts.mesh_port}" for h in hosts]
        self.node.connect(targets)
        return targets

    def forget(self, hosts: list[str]) -> list[str]:
        assert self.node is not None
        targets = [h if ":" in h else f"{h}:{self.opts.mesh_port}" for h in hosts]
        self.node.forget(targets)
        return targets

    def describe(self) -> dict[str, Any]:
        assert self.node is not None
        st = self.node.describe()
        st["encryption"] = bool(self.opts.password)
        st["mesh_port"] = self.node.port
        if self.info is not None and self.info.rejected:
            st["rejected_peer_info"] = dict(self.info.rejected)
        return st
