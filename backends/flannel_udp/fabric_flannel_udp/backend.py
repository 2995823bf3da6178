"""flannel-udp backend: flannel's udp design on netfabric's userspace engine.

Per node: the pod bridge (``<net>.br``, first address of the lease) and a TUN
device ``<net>.tun`` holding the lease's network address with the network's
prefix length, so traffic for other nodes' subnets enters the TUN device. The
engine (``fabric.dataplane``, running in the agent process) sends each inner
IPv4 packet in its own UDP datagram to the owning node's PublicIP on port
8285 — flannel's wire format — batching with GSO/GRO where the kernel allows.
MTU = underlay MTU - 28. TTL is decremented; packets for addresses no lease
covers get ICMP net-unreachable. The TUN device is persistent: it and its
routes survive an agent restart, while forwarding pauses until the agent is
back (as with flanneld's udp backend). A watchdog re-creates the device and
engine if the device is deleted or a forwarding thread died.
"""

from __future__ import annotations

import contextlib
import threading
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from fabric.api import Capabilities, NetworkContext, Peer, check_options
from fabric.bridged import BridgeBackend, Watchdog
from fabric.dataplane import Engine, EngineConfig, PeerAddr, PeerTable, unpersist
from fabric.errors import BackendError, ConfigError
from fabric.net import delete_link, link_index, require_kind, set_address, set_up

__all__ = ["FlannelUdpBackend", "UDP_OVERHEAD", "DEFAULT_PORT"]

UDP_OVERHEAD = 28  # outer IPv4 20 + UDP 8
DEFAULT_PORT = 8285
_OPTIONS = {"Type", "Port", "Offload", "InnerChecksum"}


class FlannelUdpBackend(BridgeBackend):
    name = "flannel-udp"
    default_ipam = "subnet"
    capabilities = Capabilities(userspace=True)

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        cfg = check_options(ctx.spec.backend_config, _OPTIONS, "flannel-udp")
        port = cfg.get("Port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"flannel-udp backend: Port must be an integer in [1, 65535], "
                              f"got {port!r}")
        offload = cfg.get("Offload", True)
        if not isinstance(offload, bool):
            raise ConfigError("flannel-udp backend: Offload must be true or false")
        checksum = cfg.get("InnerChecksum", "full")
        if checksum not in ("full", "partial"):
            raise ConfigError("flannel-udp backend: InnerChecksum must be 'full' or 'partial'",
                              fix="'full' keeps the wire readable by flanneld; 'partial' "
                                  "saves CPU when every node runs netfabric")
        if ctx.node.mtu - UDP_OVERHEAD < 576:
            raise ConfigError(f"underlay MTU {ctx.node.mtu} is too small for flannel-udp")
        self.port = port
        self.offload = offload
        self.full_checksum = checksum == "full"
        self.device = ctx.device_name("tun")
        self.table = PeerTable()
        self.engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self.watchdog = Watchdog(f"{self.device}-watchdog", 0.5, self._restart_if_broken, ctx.log)

    @property
    def mtu(self) -> int:
        return self.ctx.node.mtu - UDP_OVERHEAD

    def prepare(self) -> dict[str, Any]:
        require_kind("tun")
        return {"Port": self.port}

    def start(self, chunks: tuple[IPv4Network, ...]) -> None:
        super().start(chunks)
        with self._engine_lock:
            if self.engine is None or not self.engine.healthy:
                self._start_engine()
        self.watchdog.start()

    def _start_engine(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        chunk = self.chunks[0]
        config = EngineConfig(
            mode="tun", device=self.device, listen_ip=str(self.ctx.node.public_ip),
            port=self.port, underlay_mtu=self.ctx.node.mtu, offload=self.offload,
            persist=True, full_checksum=self.full_checksum,
            icmp_source=str(chunk.network_address),
        )
        engine = Engine(config, self.table)
        engine.start()
        try:
            set_up(self.device, self.mtu)
            set_address(self.device,
                        IPv4Interface(f"{chunk.network_address}/{self.ctx.spec.cidr.prefixlen}"))
        except BackendError:
            engine.stop()
            raise
        self.engine = engine
        status = engine.status()
        if not status["fast_path"]:
            self.ctx.log.warning("flannel-udp: per-packet fallback (%s)",
                                 status["fallback_reason"] or "no offloads")

    def _restart_if_broken(self) -> bool:
        """Watchdog tick: re-create the TUN device and engine if the device vanished or an
        engine thread died."""
        with self._engine_lock:
            engine = self.engine
            if engine is not None and engine.healthy and link_index(self.device) is not None:
                return False
            if self.watchdog.stopping:
                return False
            why = engine.errors if engine is not None else "not running"
            self.ctx.log.warning("flannel-udp: restarting the dataplane (%s)", why)
            self._start_engine()
            return True

    def program_peer(self, peer: Peer, subnet: IPv4Network) -> None:
        port = peer.data.get("Port", self.port) if isinstance(peer.data, dict) else self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise BackendError(f"lease of {peer.public_ip} has an invalid BackendData.Port "
                               f"({port!r})")
        self.table.set(subnet, PeerAddr(str(peer.public_ip), port))

    def unprogram_peer(self, peer: Peer, subnet: IPv4Network) -> None:
        self.table.remove(subnet)

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update(device=self.device, port=self.port, restarted=self.watchdog.repairs,
                   dataplane=self.engine.status() if self.engine else None)
        return out

    def stop(self) -> None:
        self.watchdog.stop(timeout=3)
        with self._engine_lock:
            if self.engine is not None:
                self.engine.stop()
                self.engine = None

    def teardown(self) -> None:
        self.stop()
        super().teardown()
        if link_index(self.device) is not None:
            with contextlib.suppress(BackendError):
                unpersist(self.device)
            delete_link(self.device)
