"""Sleeve: weave's user-space overlay — the bridge's frames through a TAP into UDP.

:class:`Sleeve` runs a :class:`fabric.dataplane.Engine` in routed L2 mode (origin and
destination peer names in every message, sealed per hop with a password) on UDP
``DataPort``, its TAP an *isolated* port of the node bridge. On every mesh change it
rebuilds the engine's :class:`~fabric.dataplane.WeaveRoutes` from the
:class:`~fabric.weave.control.MeshView`:

- neighbours: peers with a symmetric mesh connection whose peer info is known (address,
  data port, public key when encrypted);
- unicast: the mesh's next hops (two peers without a direct link relay through a third);
- floods: the mesh's broadcast trees (each peer gets one copy), or, when some peers are
  on weave-fastdp's kernel path, one relayed unicast copy per sleeve peer (``only``).

Per-neighbour heartbeats on the same UDP port decide whether the sleeve path to a peer is
``established``; :meth:`Sleeve.modes` says so for status.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from fabric.api import NetworkContext
from fabric.dataplane import Engine, EngineConfig, KeyPair, PeerAddr
from fabric.dataplane.routing import WeaveRoutes
from fabric.errors import BackendError
from fabric.weave.bridge import WeaveBridge
from fabric.weave.control import MeshView, WeaveControl
from fabric.weave.options import WeaveOptions, psk_from_password

__all__ = ["Sleeve", "sleeve_config"]

log = logging.getLogger("fabric.weave")


def _b(name: int) -> bytes:
    return name.to_bytes(6, "big")


def sleeve_config(ctx: NetworkContext, opts: WeaveOptions) -> EngineConfig:
    return EngineConfig(
        mode="tap", device=ctx.device_name("tap"), listen_ip=str(ctx.node.public_ip),
        port=opts.data_port, underlay_mtu=ctx.node.mtu, encrypt=bool(opts.password),
        psk=psk_from_password(opts.password), persist=True, routed=True,
        heartbeat_interval=opts.heartbeat)


class Sleeve:
    def __init__(self, ctx: NetworkContext, opts: WeaveOptions, control: WeaveControl,
                 bridge: WeaveBridge) -> None:
        self.ctx, self.opts, self.control, self.bridge = ctx, opts, control, bridge
        self.config = sleeve_config(ctx, opts)
        self.engine: Engine | None = None
        self.routes: WeaveRoutes | None = None
        # weave-fastdp: when set, sleeve carries only these peers (the others are on the
        # kernel path); None = every peer (weave-sleeve)
        self.only: frozenset[int] | None = None
        self.missing_info: set[int] = set()

    @property
    def overhead(self) -> int:
        return self.config.overhead

    def start(self, pod_mtu: int) -> None:
        node = self.control.node
        if node is None:
            raise BackendError("the weave mesh is not running")
        key = KeyPair.load_or_create(self.ctx.state_dir / "sleeve.key")
        self.routes = WeaveRoutes(_b(node.name), mac_expiry=self.opts.mac_expiry)
        self.engine = Engine(self.config, self.routes, key=key)
        self.engine.start()
        # the TAP carries pod frames at the pods' MTU (super-frames are cut by the engine)
        self.bridge.add_port(self.config.device, isolated=True, mtu=pod_mtu)
        self.control.publish(data_port=self.config.port, public_key=key.public)
        self.control.subscribe(self.apply)
        log.info("weave sleeve on UDP %s:%s, TAP %s, encryption %s", self.config.listen_ip,
                 self.config.port, self.config.device,
                 "on (sealed per hop)" if self.config.encrypt else "off")

    def set_only(self, peers: Iterable[int] | None) -> None:
        """weave-fastdp: restrict sleeve to ``peers`` (None: all); re-applies the view."""
        self.only = None if peers is None else frozenset(peers)
        self.control.soon(lambda: self.apply(self.control.view) if self.control.view else None)

    def apply(self, view: MeshView) -> None:
        """Rebuild the routing table from a mesh view (mesh thread)."""
        routes = self.routes
        if routes is None:
            return
        neighbours: dict[bytes, PeerAddr] = {}
        missing = set()
        for name in view.neighbours:
            info = view.infos.get(name)
            if info is None or (self.config.encrypt and not info.public_key):
                missing.add(name)
                continue
            neighbours[_b(name)] = PeerAddr(str(info.ip), info.data_port, info.public_key)
        self.missing_info = missing
        routes.set_neighbours(neighbours)
        routes.set_unicast({_b(d): _b(v) for d, v in view.unicast.items() if d != view.me})
        if self.only is None:
            routes.set_excluded(())
            routes.set_no_deliver(())
            routes.set_flood({_b(o): [_b(c) for c in kids] for o, kids in view.broadcast.items()})
        else:
            # Unicast may still use sleeve to any peer (the bridge decides which overlay
            # port a known MAC is behind, and relays for others must work); floods go as
            # one unicast copy per sleeve peer, since fastdp peers get theirs from VXLAN.
            routes.set_excluded(())
            routes.set_flood_targets({_b(view.me): [_b(p) for p in view.reachable
                                                    if p in self.only]})
            # frames of kernel-path peers are not taken from the sleeve: the bridge must
            # learn their MACs behind the VXLAN port (a late sleeve frame would pull them
            # behind the TAP, and all traffic to that peer would follow into user space)
            routes.set_no_deliver([_b(p) for p in view.reachable if p not in self.only])

    def health(self) -> dict[int, dict[str, Any]]:
        if self.engine is None:
            return {}
        return {int.from_bytes(k, "big"): v for k, v in self.engine.peer_health().items()}

    def modes(self) -> dict[int, str]:
        """Per peer: ``sleeve`` + heartbeat state, or relayed when not a neighbour."""
        out: dict[int, str] = {}
        for name, h in self.health().items():
            out[name] = f"sleeve {h.get('state', '?')}"
        for name in self.missing_info:
            out[name] = "sleeve waiting for peer info"
        return out

    def status(self) -> dict[str, Any]:
        if self.engine is None:
            return {"running": False}
        st = self.engine.status()
        st["encryption"] = "sealed per hop" if self.config.encrypt else "off"
        return st

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()  # the TAP persists: pods keep their bridge port
            self.engine = None

    def teardown(self) -> None:
        self.stop()
        from fabric.dataplane import unpersist
        from fabric.net import delete_link

        with contextlib.suppress(Exception):  # gone already
            unpersist(self.config.device, tap=True)
        delete_link(self.config.device)
        (self.ctx.state_dir / "sleeve.key").unlink(missing_ok=True)
