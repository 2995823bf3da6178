"""Fastdp: weave's kernel data path on a Linux VXLAN device, per-peer fallback to sleeve.

Weave's fast datapath programs Open vSwitch flows; this kernel has no OVS datapath, so the
same behaviour is built from a VXLAN device (UDP ``FastdpPort``, 6784) that is an isolated
port of the node bridge:

- **Flooding**: one all-zeros FDB entry per fastdp peer (``dst`` = its underlay address):
  the kernel replicates broadcast, multicast and unknown unicast to each fastdp peer once.
  The bridge never forwards between its overlay ports (both isolated), so a frame that
  came in over VXLAN is not sent on over sleeve, nor the reverse: no loops, no duplicates.
- **Unicast**: the VXLAN device learns which remote MAC sits behind which peer from
  received frames (as weave learns MACs from ODP misses); the bridge learns the port.
- **Per-peer mode**: heartbeats travel the real fastdp path — Ethernet frames of type
  0x88B5 sent on the VXLAN device to the peer's VTEP MAC (a static FDB entry), encapsulated
  by the kernel like pod traffic, received with a packet socket on the peer's VXLAN device.
  :class:`~fabric.dataplane.heartbeat.PathHealth` decides per peer; a peer whose fastdp
  path is not established (blocked UDP 6784, no VTEP yet, reachable only through a relay)
  is carried by sleeve: its flood entry and learned MACs leave the VXLAN device, the
  bridge forgets what it learned on the overlay ports, and the sleeve floods to it. When
  heartbeats return, the peer moves back to fastdp.
- **MTU**: pods get ``underlay - max(VXLAN, sleeve)`` overhead, fixed at ADD: a peer can
  fall back to sleeve at any time and a running pod's MTU cannot follow, so the pod MTU
  always fits the sleeve's larger header (75 bytes against VXLAN's 50: 1.7 % of payload).
- **Encryption**: with a password, fastdp needs kernel ESP (AES-GCM through XFRM).
  :func:`probe_esp` checks for it in a throwaway network namespace; fastdp with ESP is not
  implemented, so a password always means encrypted sleeve for every peer, said in status
  and in the log.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import socket
import struct
import subprocess
import threading
import time
from ipaddress import IPv4Address
from typing import Any

from fabric.api import NetworkContext
from fabric.dataplane.heartbeat import PathHealth
from fabric.errors import BackendError
from fabric.net import delete_link, ensure_vxlan, ipr, link_index, netlink_call, require_kind
from fabric.weave.bridge import WeaveBridge, stable_mac
from fabric.weave.control import MeshView, WeaveControl
from fabric.weave.options import WeaveOptions
from fabric.weave.sleeve import Sleeve

__all__ = ["FastDP", "VXLAN_OVERHEAD", "ETH_P_HEARTBEAT", "probe_esp"]

log = logging.getLogger("fabric.weave")

VXLAN_OVERHEAD = 20 + 8 + 8 + 14  # outer IPv4 + UDP + VXLAN + inner Ethernet
ETH_P_HEARTBEAT = 0x88B5  # IEEE 802 local experimental ethertype
ZERO_MAC = "00:00:00:00:00:00"
LINGER = 300.0  # seconds a fastdp peer the mesh lost keeps its kernel entries
# A peer whose direct mesh connection dropped can look reachable through a third peer until
# that one notices too (3 mesh heartbeats): only after this long is "relayed" believed.
RELAY_GRACE = 5.0
_VNI = 0x77  # weave's fastdp VNIs are per peer pair; one network needs only one


def probe_esp() -> str | None:
    """None if the kernel can do ESP with AES-GCM (XFRM), else why not.

    Adds an SA in a throwaway network namespace (``unshare -n``): nothing persists and
    the caller's namespace is not touched."""
    cmd = ["unshare", "-n", "ip", "xfrm", "state", "add", "src", "198.18.255.1", "dst",
           "198.18.255.2", "proto", "esp", "spi", "0x100", "reqid", "1", "mode", "transport",
           "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot probe XFRM: {exc}"
    if res.returncode == 0:
        return None
    return f"kernel ESP with rfc4106(gcm(aes)) unavailable: {res.stderr.strip() or 'failed'}"


ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4


def _ethertype_filter(ethertype: int) -> bytes:
    """struct sock_fprog for: ldh [12]; jeq #ethertype, accept, drop (classic BPF)."""
    code = [(0x28, 0, 0, 12), (0x15, 0, 1, ethertype), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
    prog = b"".join(struct.pack("HBBI", *insn) for insn in code)
    buf = ctypes.create_string_buffer(prog)
    _FILTERS.append(buf)  # the kernel copies the program; keep the buffer alive meanwhile
    return struct.pack("HL", len(code), ctypes.addressof(buf))


_FILTERS: list[Any] = []


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(p, 16) for p in mac.split(":"))


class FastDP:
    def __init__(self, ctx: NetworkContext, opts: WeaveOptions, control: WeaveControl,
                 bridge: WeaveBridge, sleeve: Sleeve) -> None:
        self.ctx, self.opts, self.control = ctx, opts, control
        self.bridge, self.sleeve = bridge, sleeve
        self.device = ctx.device_name("vx")
        self.mac = stable_mac("weave-vtep", ctx.spec.name, ctx.node.name)
        self.health = PathHealth(opts.heartbeat, 3, self._health_changed)
        self.enabled = False
        self.reason = ""  # why fastdp is off (or "" when on)
        self.peers: dict[int, tuple[IPv4Address, str]] = {}  # fastdp-capable: ip, vtep mac
        self.fast: set[int] = set()  # peers on the kernel path now
        self.switches = 0
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._programmed: dict[int, IPv4Address] = {}
        self._view: MeshView | None = None
        self._adopt: set[str] = set()
        self._gone: dict[int, float] = {}  # fastdp peers the mesh lost, since when
        self.reachable: set[int] = set()
        self._stale_after = 0.0
        self._wake = threading.Event()

    # ---- lifecycle --------------------------------------------------------------------
    def start(self, pod_mtu: int) -> None:
        if self.opts.password:
            why = probe_esp()
            self.reason = ("encryption requested: " + (why or "fastdp with kernel ESP is not "
                           "implemented") + "; every peer uses encrypted sleeve")
            log.warning("weave-fastdp: %s", self.reason)
            self.sleeve.set_only(None)
            self.teardown_device()  # never leave an unencrypted kernel path behind
            return
        require_kind("vxlan")
        underlay = link_index(self.ctx.node.iface)
        if underlay is None:
            raise BackendError(f"underlay interface {self.ctx.node.iface} does not exist")
        ensure_vxlan(self.device, vni=_VNI, port=self.opts.fastdp_port,
                     local=self.ctx.node.public_ip, underlay_index=underlay,
                     mtu=pod_mtu, learning=True, mac=self.mac)
        self.bridge.add_port(self.device, isolated=True, mtu=pod_mtu)
        # After a restart the kernel kept forwarding: adopt the flood entries of the last run
        # (those peers stay on fastdp unless heartbeats fail), drop the rest once the mesh
        # had time to reconnect.
        self._adopt = {e["dst"] for e in self._fdb_entries()
                       if e["mac"] == ZERO_MAC and e["dst"]}
        self._stale_after = time.monotonic() + 15
        self._sock = self._open_socket()
        self.enabled = True
        self.sleeve.set_only(set())  # until heartbeats say otherwise, sleeve for nobody...
        self.control.publish(fastdp_port=self.opts.fastdp_port, vtep_mac=self.mac)
        self.control.subscribe(self.apply)
        for target, name in ((self._rx_loop, "fastdp-rx"), (self._tick_loop, "fastdp-hb")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("weave fastdp on VXLAN %s (UDP %s), falling back to sleeve per peer",
                 self.device, self.opts.fastdp_port)

    def _open_socket(self) -> socket.socket:
        # A bridge port's frames reach protocol-specific packet sockets only after the bridge
        # took them, so listen to everything on the device (ETH_P_ALL, delivered before the
        # bridge) and let a classic BPF filter pass nothing but heartbeats to user space.
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _ethertype_filter(ETH_P_HEARTBEAT))
        s.bind((self.device, ETH_P_ALL))
        s.settimeout(0.5)
        return s

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self._threads = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def teardown_device(self) -> None:
        delete_link(self.device)

    def teardown(self) -> None:
        self.stop()
        self.teardown_device()

    # ---- mesh view ----------------------------------------------------------------------
    def apply(self, view: MeshView) -> None:
        """Mesh thread: remember the view; the heartbeat thread programs the kernel (netlink
        must not run on the mesh's asyncio thread, and one thread owns the FDB)."""
        self._view = view
        self._wake.set()

    def _reconcile(self, view: MeshView) -> None:
        with self._lock:
            now = time.monotonic()
            self.reachable = set(view.reachable)
            returning: set[int] = set()
            lost_sleeve = False
            peers = {}
            for name in view.neighbours:  # relayed peers stay on sleeve: no direct path
                info = view.infos.get(name)
                if info is not None and info.fastdp_port and info.vtep_mac:
                    peers[name] = (info.ip, info.vtep_mac)
            for name in set(self.peers) - set(peers):
                if name in self.fast:
                    # No longer a direct neighbour. Its agent may be restarting (the kernel
                    # path outlives it) or the link may be cut: keep its entries for now;
                    # _sync_modes decides once the mesh has settled (RELAY_GRACE). Whatever
                    # the bridge learned behind the sleeve port cannot reach it now.
                    if name not in self._gone:
                        self._gone[name] = now
                        lost_sleeve = True
                    peers[name] = self.peers[name]
                else:
                    self._drop(name)
            for name, (ip, mac) in peers.items():
                old = self.peers.get(name)
                if old != (ip, mac):
                    if old is not None:  # it moved: nothing of the old address stays
                        self._drop(name)
                    self._program_vtep(ip, mac)
                if name in view.neighbours and self._gone.pop(name, None) is not None:
                    returning.add(name)
                if str(ip) in self._adopt:
                    self._adopt.discard(str(ip))
                    self._programmed[name] = ip
                    self.fast.add(name)
            if lost_sleeve:
                self._flush_bridge_learned((self.sleeve.config.device,))
            self.peers = peers
            # a peer back after its agent restarted gets a fresh grace period to answer
            # heartbeats before it could be demoted (it kept its fastdp path meanwhile)
            self.health.set_peers(set(peers) - returning)
            self.health.set_peers(peers)
            self.fast &= set(peers)
            self._sync_sleeve(view)

    def _drop(self, name: int) -> None:
        was_fast = name in self.fast
        self._unprogram(name)
        self.fast.discard(name)
        self._gone.pop(name, None)
        if was_fast:  # the bridge still sends its MACs to the VXLAN port: forget them
            self._flush_bridge_learned()

    def _sync_sleeve(self, view: MeshView | None = None) -> None:
        view = view or self.control.view
        if view is None:
            return
        self.sleeve.set_only({p for p in view.reachable if p not in self.fast})

    # ---- heartbeats ---------------------------------------------------------------------
    def _health_changed(self, name: Any, old: str, new: str) -> None:
        self._wake.set()  # from PathHealth (rx or heartbeat thread): the heartbeat thread acts

    def _sync_modes(self) -> None:
        """Level-triggered: every peer's mode follows its fastdp path's state (a failed
        switch is retried on the next round). ``pending`` keeps the current mode."""
        with self._lock:
            for name in list(self.peers):
                state = self.health.state(name)
                if state == "established" and name not in self.fast:
                    self._to_fast(name)
                elif state == "unreachable" and name in self.fast and name in self.reachable \
                        and name not in self._gone:
                    # the mesh still reaches it, only the fastdp path broke: sleeve takes over
                    self._to_sleeve(name, state)
            now = time.monotonic()
            for name, since in list(self._gone.items()):
                relayed = name in self.reachable and now - since > RELAY_GRACE
                if relayed or now - since > LINGER:
                    # still reachable, but only through a relay: sleeve carries it; or gone
                    # for good: forget it
                    log.info("weave-fastdp: peer %012x %s: its fastdp entries removed", name,
                             "reachable only through a relay" if relayed else
                             f"gone for {now - since:.0f} s")
                    self._drop(name)
                    self.peers.pop(name, None)
                    self.health.set_peers(self.peers)
                    self._sync_sleeve()
            if self._stale_after and time.monotonic() > self._stale_after:
                self._stale_after = 0.0
                current = {str(ip) for ip, _mac in self.peers.values()}
                for entry in self._fdb_entries():
                    if entry["dst"] and entry["dst"] not in current:
                        self._fdb("del", entry["mac"], IPv4Address(entry["dst"]))

    def _to_fast(self, name: int) -> None:
        ip, _mac = self.peers[name]
        self._fdb("append", ZERO_MAC, ip)
        self._programmed[name] = ip
        self.fast.add(name)
        self.switches += 1
        self._sync_sleeve()
        self._flush_bridge_learned()
        log.info("weave-fastdp: peer %012x (%s) on fastdp", name, ip)

    def _to_sleeve(self, name: int, state: str) -> None:
        ip, mac = self.peers[name]
        self.fast.discard(name)
        self._unprogram(name, keep_vtep=True)
        self.switches += 1
        self._sync_sleeve()
        self._flush_bridge_learned()
        log.warning("weave-fastdp: fastdp path to peer %012x (%s) %s: using sleeve", name, ip,
                    state)

    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                frame, addr = sock.recvfrom(256)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.2)
                continue
            if addr[2] == PACKET_OUTGOING or len(frame) < 20 \
                    or frame[12:14] != ETH_P_HEARTBEAT.to_bytes(2, "big"):
                continue
            name = int.from_bytes(frame[14:20], "big")
            with self._lock:
                known = self.peers.get(name)
            if known is None or _mac_bytes(known[1]) != frame[6:12]:
                continue  # not from a peer's VTEP we know: ignore (counted by no one)
            self.health.received(name, frame[20:])

    def _tick_loop(self) -> None:
        me = (self.control.node.name if self.control.node else 0).to_bytes(6, "big")
        src = _mac_bytes(self.mac)
        while not self._stop.is_set():
            self._wake.wait(min(0.2, self.opts.heartbeat / 2))
            self._wake.clear()
            view, self._view = self._view, None
            try:
                if view is not None:
                    self._reconcile(view)
                self._sync_modes()
            except Exception:  # a netlink failure must not end the heartbeats
                log.exception("weave-fastdp: programming the kernel failed")
            sock = self._sock
            if sock is None:
                return
            for name, payload in self.health.outgoing():
                with self._lock:
                    peer = self.peers.get(name) if isinstance(name, int) else None
                if peer is None:
                    continue
                frame = _mac_bytes(peer[1]) + src + ETH_P_HEARTBEAT.to_bytes(2, "big") + me
                with contextlib.suppress(OSError):
                    sock.send(frame + payload)
            self.health.tick()

    # ---- kernel FDB -------------------------------------------------------------------
    def _fdb(self, command: str, mac: str, dst: IPv4Address | None = None) -> None:
        idx = link_index(self.device)
        if idx is None:
            return
        # NTF_SELF: the VXLAN device's own FDB (without it the bridge master's is meant)
        kw: dict[str, Any] = {"ifindex": idx, "lladdr": mac, "flags": 2, "state": 0x80}
        if dst is not None:
            kw["dst"] = str(dst)
        with ipr() as sock:
            netlink_call(f"fdb {command} {mac} dst {dst} on {self.device}", sock.fdb, command,
                         ignore=(errno.ENOENT, errno.EEXIST), **kw)

    def _program_vtep(self, ip: IPv4Address, mac: str) -> None:
        self._fdb("replace", mac, ip)  # heartbeats reach the peer's VTEP in every mode

    def _unprogram(self, name: int, keep_vtep: bool = False) -> None:
        ip = self._programmed.pop(name, None) or (self.peers.get(name) or (None, ""))[0]
        if ip is None:
            return
        for entry in self._fdb_entries():
            if entry["dst"] == str(ip) and (not keep_vtep or entry["mac"] !=
                                            (self.peers.get(name) or (None, ""))[1]):
                self._fdb("del", entry["mac"], ip)

    def _fdb_entries(self) -> list[dict[str, str]]:
        idx = link_index(self.device)
        if idx is None:
            return []
        out = []
        with ipr() as sock:
            for m in sock.fdb("dump", ifindex=idx):
                if m.get("ifindex") != idx:
                    continue
                out.append({"mac": m.get_attr("NDA_LLADDR") or "",
                            "dst": m.get_attr("NDA_DST") or ""})
        return out

    def _flush_bridge_learned(self, ports: tuple[str, ...] = ()) -> None:
        """Forget MACs the bridge learned on its overlay ports: the path to them changed."""
        for port in ports or (self.device, self.sleeve.config.device):
            if link_index(port) is None:
                continue
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(["bridge", "fdb", "flush", "dev", self.bridge.name, "brport",
                                port, "dynamic"], capture_output=True, timeout=5)

    # ---- status -----------------------------------------------------------------------
    def modes(self) -> dict[int, str]:
        if not self.enabled:
            return {}
        health = self.health.health()
        return {n: "fastdp" if n in self.fast else
                f"sleeve (fastdp {health.get(n, {}).get('state', 'unknown')})"
                for n in self.peers}

    def status(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "reason": self.reason, "device": self.device,
                "port": self.opts.fastdp_port, "vtep_mac": self.mac,
                "fastdp_peers": sorted(f"{n:012x}" for n in self.fast),
                "switches": self.switches,
                "health": {f"{n:012x}": h for n, h in self.health.health().items()}}
