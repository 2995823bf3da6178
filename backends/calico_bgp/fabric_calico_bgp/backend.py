"""The calico-bgp Backend: routed veths, exabgp speaker, learned routes into the kernel."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from fabric.api import (
    Allocation,
    Backend,
    Capabilities,
    Endpoint,
    NetworkContext,
    Peer,
    PeerEvent,
    Route,
    Workload,
)
from fabric.errors import BackendError, ConfigError
from fabric.net import LINK_LOCAL_GATEWAY, attach_routed, check_pod, link_index, link_names
from fabric.net.podveths import PodVeths
from fabric.net.validate import Refusals, mac_problem, public_ip_problem, subnet_problem
from fabric_calico_bgp.config import parse_config
from fabric_calico_bgp.dataplane import Dataplane
from fabric_calico_bgp.exabgp import BgpNeighbor, Speaker, render_config
from fabric_calico_bgp.messages import Message, PeerState, RouteUpdate
from fabric_calico_bgp.reflect import Reflector
from fabric_calico_bgp.rib import RouteTable
from fabric_calico_bgp.status import build_status

__all__ = ["CalicoBgpBackend"]

SWEEP_AFTER = 5.0  # s after a session is up, unrefreshed stale routes go
_SPEAKERS: dict[tuple[IPv4Address, int], str] = {}  # (address, port) -> network, this process
_SPEAKERS_LOCK = threading.Lock()


class CalicoBgpBackend(Backend):
    """Calico's data path: no bridge, a /32 per pod, pod routes distributed by BGP."""

    name = "calico-bgp"
    default_ipam = "blocks"
    capabilities = Capabilities()
    veth_prefix = "cali"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self.cfg = parse_config(ctx.spec.backend_config)
        self.dp = Dataplane(ctx, self.cfg)
        self.pods = PodVeths(ctx, self.veth_prefix)
        self.fast = self.pods.fast  # option FastPath (fabric.net.fastpath)
        self.table = RouteTable()
        self.chunks: tuple[IPv4Network, ...] = ()
        self.nodes: dict[str, Peer] = {}
        self.route_state: dict[IPv4Network, str] = {}
        self.refused = Refusals(ctx.log, "record")  # node records and routes, before the kernel
        self.sessions: dict[IPv4Address, dict[str, Any]] = {}
        self.neighbors: dict[IPv4Address, BgpNeighbor] = {}
        self.speaker: Speaker | None = None
        self.reflector = Reflector(self) if self.cfg.rr_cluster_id else None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._started = 0.0
        self._reconciled = False

    @property
    def mtu(self) -> int:
        return self.dp.mtu

    @property
    def router_id(self) -> IPv4Address:
        return self.ctx.node.public_ip

    # -- lifecycle --
    def prepare(self) -> dict[str, Any]:
        if importlib.util.find_spec("exabgp") is None:
            raise BackendError("calico-bgp needs exabgp, which is not installed",
                               fix="pip install exabgp (or netfabric[bgp])")
        data: dict[str, Any] = dict(self.dp.prepare())
        data["BGP"] = {"ASNumber": self.cfg.asn,
                       "RouteReflectorClusterID": str(self.cfg.rr_cluster_id or "")}
        return data

    def start(self, chunks: tuple[IPv4Network, ...]) -> None:
        key = (self.router_id, self.cfg.listen_port)
        with _SPEAKERS_LOCK:
            other = _SPEAKERS.get(key)
            if other not in (None, self.ctx.spec.name):
                raise ConfigError(
                    f"calico-bgp: network {other} already runs a BGP speaker on "
                    f"{key[0]}:{key[1]} in this agent",
                    fix="serve one calico-bgp network per node (Calico has one BGP speaker "
                        "per node too)")
            _SPEAKERS[key] = self.ctx.spec.name
        self.dp.start()
        self.pods.start(self.dp.uplinks(), link_names())
        with self._lock:
            self.chunks = tuple(chunks)
            self.dp.set_local_blocks(self.chunks)
            self.neighbors = self._wanted_neighbors()
        self._started = time.monotonic()
        self.speaker = Speaker(
            self.ctx.state_dir / "bgp", bind=self.router_id, port=self.cfg.listen_port,
            on_message=self._on_message, on_connected=self._on_connected,
            on_session_lost=self._on_speaker_lost, log=self.ctx.log,
        )
        self.speaker.start(self._render())
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="bgp-rib", daemon=True)
        self._ticker.start()

    def _render(self) -> str:
        return render_config(
            router_id=self.router_id, local_as=self.cfg.asn,
            neighbors=list(self.neighbors.values()), api_socket=self.ctx.state_dir / "bgp" /
            "api.sock", hold_time=self.cfg.hold_time, graceful_restart=self.cfg.graceful_restart,
        )

    def stop(self) -> None:
        with _SPEAKERS_LOCK:
            if _SPEAKERS.get((self.router_id, self.cfg.listen_port)) == self.ctx.spec.name:
                del _SPEAKERS[(self.router_id, self.cfg.listen_port)]
        self._stop.set()
        if self.speaker is not None:
            self.speaker.stop()  # routes stay in the kernel: pods keep working
        if self._ticker is not None:
            self._ticker.join(5)
        self.pods.stop()

    def teardown(self) -> None:
        self.stop()
        self.pods.teardown(self.dp.uplinks())
        self.dp.teardown()

    # -- peers (nodes from the IPAM) and BGP neighbours --
    def _wanted_neighbors(self) -> dict[IPv4Address, BgpNeighbor]:
        out = {p.address: BgpNeighbor(p.address, p.asn, "global", kind="global")
               for p in self.cfg.peers}
        i_am_rr = self.cfg.rr_cluster_id is not None
        for node in self.nodes.values():
            raw = node.data.get("BGP")
            bgp: dict[str, Any] = raw if isinstance(raw, dict) else {}
            asn = bgp.get("ASNumber", self.cfg.asn)
            if isinstance(asn, bool) or not isinstance(asn, int) or not 0 < asn < 2**32:
                self.ctx.log.warning("node %s publishes a bad ASNumber %r", node.name, asn)
                continue
            peer_rr = bool(bgp.get("RouteReflectorClusterID"))
            if i_am_rr or self.cfg.mesh or peer_rr:
                kind = "rr-client" if i_am_rr and not peer_rr else (
                    "route-reflector" if peer_rr else "node-mesh")
                out.setdefault(node.public_ip, BgpNeighbor(
                    node.public_ip, asn, node.name, rr_client=kind == "rr-client", kind=kind))
        out.pop(self.router_id, None)
        return out

    def peers_changed(self, events: Sequence[PeerEvent]) -> None:
        with self._lock:
            touched: set[IPv4Address] = set()
            for ev in events:
                if ev.kind == "removed":
                    self.nodes.pop(ev.peer.name, None)
                    self.refused.accept(f"node {ev.peer.name}")
                elif why := self._node_problem(ev.peer):
                    self.refused.refuse(f"node {ev.peer.name}", why, ev.peer)
                    self.nodes.pop(ev.peer.name, None)
                else:
                    self.refused.accept(f"node {ev.peer.name}")
                    old = self.nodes.get(ev.peer.name)
                    if old is None or old.data.get("VtepMAC") != ev.peer.data.get("VtepMAC"):
                        touched.add(ev.peer.public_ip)
                    self.nodes[ev.peer.name] = ev.peer
            wanted = self._wanted_neighbors()
            gone = set(self.neighbors) - set(wanted)
            changed = wanted != self.neighbors
            self.neighbors = wanted
            for addr in gone:  # a node left the cluster: no graceful hold for it
                self.sessions.pop(addr, None)
                self._reprogram(self.table.drop_peer(addr))
            if self.dp.mode == "vxlan" and touched:  # a VTEP MAC arrived or changed
                stale = {p for p, (nh, _how) in self.dp.installed.items() if nh in touched}
                failed = {p for p, st in self.route_state.items() if st.startswith("failed")}
                self._reprogram(stale | failed)
        if changed and self.speaker is not None:
            self.speaker.reload(self._render())

    def chunks_changed(self, chunks: tuple[IPv4Network, ...]) -> None:
        with self._lock:
            old, self.chunks = set(self.chunks), tuple(chunks)
            self.dp.set_local_blocks(self.chunks)
            for c in sorted(set(chunks) - old):
                self._announce(c)
            for c in sorted(old - set(chunks)):
                self._send(f"withdraw route {c}")
            self._reprogram(old ^ set(chunks))

    # -- speaker callbacks --
    def _send(self, command: str) -> None:
        if self.speaker is not None:
            self.speaker.send(command)

    def _announce(self, chunk: IPv4Network, neighbor: IPv4Address | None = None) -> None:
        head = f"neighbor {neighbor} " if neighbor else ""
        self._send(f"{head}announce route {chunk} next-hop {self.router_id}")

    def _on_connected(self) -> None:
        with self._lock:
            for c in self.chunks:
                self._announce(c)

    def _on_speaker_lost(self) -> None:
        with self._lock:
            for addr in list(self.sessions) + [p for p in self.table.counts()]:
                self._session_down(addr, "speaker restarting")

    def _session_down(self, addr: IPv4Address, reason: str) -> None:
        self.table.session_down(addr, self.cfg.graceful_restart)
        s = self.sessions.setdefault(addr, {})
        if s.get("state") == "Established" or not s:
            s["since"] = time.time()
        s.update(state="Idle", info=reason)

    def _on_message(self, msg: Message) -> None:
        with self._lock:
            if isinstance(msg, PeerState):
                self._on_state(msg)
            elif isinstance(msg, RouteUpdate):
                self._on_update(msg)

    def _on_state(self, msg: PeerState) -> None:
        if msg.peer not in self.neighbors:
            return
        if msg.state == "up":
            self.table.session_up(msg.peer)
            self.sessions[msg.peer] = {"state": "Established", "since": time.time(), "info": ""}
            for c in self.chunks:
                self._announce(c, msg.peer)
            if self.reflector is not None:
                self.reflector.peer_up(msg.peer)
            self._send(f"neighbor {msg.peer} announce eor ipv4 unicast")
        elif msg.state == "down":
            self._session_down(msg.peer, msg.reason)
        else:
            self.sessions.setdefault(msg.peer, {"since": time.time()}).update(
                state="Connect", info="")

    def _on_update(self, msg: RouteUpdate) -> None:
        if msg.peer not in self.neighbors:
            return
        accepted = [(p, nh) for p, nh in msg.announced if self._acceptable(msg.peer, p, nh)]
        filtered = RouteUpdate(msg.peer, tuple(accepted), msg.withdrawn, msg.eor, msg.ignored)
        changed = self.table.apply(filtered)
        self._reprogram(changed)
        if self.reflector is not None:
            self.reflector.reflect(filtered)

    def _node_problem(self, peer: Peer) -> str | None:
        """A node record (written by another node) fit to become a BGP neighbour."""
        if why := public_ip_problem(peer.public_ip, self.ctx.spec.cidr, own=self.router_id):
            return why
        mac = peer.data.get("VtepMAC") if isinstance(peer.data, dict) else None
        if mac is not None and (why := mac_problem(mac)):
            return f"BackendData.VtepMAC: {why}"
        return None

    def _acceptable(self, peer: IPv4Address, prefix: IPv4Network, nexthop: IPv4Address) -> bool:
        """A learned route may reach the kernel only inside the pod network (strictly: never
        the whole network, a default route or the underlay) via a unicast underlay hop."""
        key = f"route {prefix} from {peer}"
        why = subnet_problem(prefix, self.ctx.spec.cidr)
        if why is None and nexthop != self.router_id:  # our own routes reflected back: skip
            why = public_ip_problem(nexthop, self.ctx.spec.cidr)
        if why is not None:
            self.refused.refuse(key, why, str(nexthop))
            return False
        self.refused.accept(key)
        return nexthop != self.router_id

    # -- kernel --
    def _vtep_mac(self, nexthop: IPv4Address) -> str | None:
        for node in self.nodes.values():
            if node.public_ip == nexthop:
                mac = node.data.get("VtepMAC")
                return mac if isinstance(mac, str) else None
        return None

    def _reprogram(self, prefixes) -> None:
        local = set(self.chunks)
        for prefix in sorted(prefixes):
            best = None if prefix in local else self.table.best(prefix)
            try:
                if best is None:
                    self.dp.unprogram(prefix)
                    self.route_state.pop(prefix, None)
                else:
                    how = self.dp.program(prefix, best[0], self._vtep_mac(best[0]))
                    self.route_state[prefix] = f"ok ({how})"
            except BackendError as exc:
                self.route_state[prefix] = f"failed: {exc}"
                self.ctx.log.error("route %s: %s", prefix, exc)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                changed = self.table.expire(SWEEP_AFTER)
                if changed:
                    self._reprogram(changed)
                    if self.reflector is not None:
                        self.reflector.resync()
                retry = [p for p, s in self.route_state.items() if s.startswith("failed")]
                if retry:
                    self._reprogram(retry)
                if not self._reconciled and self._settled():
                    self._reconciled = True
                    n = self.dp.reconcile(self.table.prefixes(), set(self.chunks))
                    if n:
                        self.ctx.log.info("removed %d stale routes left from before", n)

    def _settled(self) -> bool:
        elapsed = time.monotonic() - self._started
        if elapsed >= max(self.cfg.graceful_restart, SWEEP_AFTER):
            return True
        up = [s for a, s in self.sessions.items() if a in self.neighbors
              and s.get("state") == "Established" and time.time() - s["since"] >= SWEEP_AFTER]
        return bool(self.neighbors) and len(up) == len(self.neighbors)

    # -- workloads --
    def attach(self, workload: Workload, allocation: Allocation) -> Endpoint:
        host, pod = self.pods.plug(workload, lambda host: attach_routed(
            workload, host=host, ip=allocation.ip, mtu=self.mtu))
        gw = LINK_LOCAL_GATEWAY
        return Endpoint(
            workload=workload, host_ifname=host, mac=pod.mac,
            addresses=(IPv4Interface(f"{allocation.ip}/32"),), gateway=gw,
            routes=(Route(IPv4Network("0.0.0.0/0"), gw),), mtu=self.mtu,
        )

    def detach(self, workload: Workload) -> None:
        self.pods.unplug(workload)

    def check(self, workload: Workload, allocation: Allocation) -> None:
        check_pod(workload, IPv4Interface(f"{allocation.ip}/32"), LINK_LOCAL_GATEWAY)
        if link_index(self.pods.host(workload)) is None:
            raise BackendError("host-side veth is missing")

    # -- status (like `calicoctl node status`) --
    def status(self) -> dict[str, Any]:
        with self._lock:
            return build_status(self)
