"""vxlan backend: flannel's kernel VXLAN design.

One VXLAN device per network (VNI 1, UDP 8472, learning off) holding the
subnet's network address /32. For each peer lease, three static entries:
an on-link route ``subnet via <subnet network address> dev vx``, a permanent
neighbour entry mapping that address to the peer's VtepMAC, and an FDB entry
sending that MAC to the peer's PublicIP. ``DirectRouting`` routes peers on the
same L2 segment like host-gw instead. The device is re-created if deleted.
``FastPath`` (default false) adds the eBPF forwarding fast path of
``fabric.net.fastpath`` on the pod veths and the VXLAN device.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, TypeGuard

from fabric.api import Capabilities, NetworkContext, Peer, check_options
from fabric.bridged import BridgeBackend, Watchdog, route_is_direct
from fabric.errors import BackendError, ConfigError
from fabric.fsutil import atomic_write
from fabric.net import (
    delete_fdb,
    delete_link,
    delete_neigh,
    delete_route,
    ensure_vxlan,
    link_index,
    link_info,
    replace_fdb,
    replace_neigh,
    replace_route,
    require_kind,
    set_address,
)
from fabric.net.validate import mac_problem

__all__ = ["VxlanBackend", "VXLAN_OVERHEAD"]

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
_OPTIONS = {"Type", "VNI", "Port", "DirectRouting", "GBP", "Learning", "FastPath"}


def _int_option(cfg: dict, key: str, default: int, low: int, high: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"vxlan backend: {key} must be an integer in [{low}, {high}], "
                          f"got {value!r}")
    return value


def _valid_mac(mac: Any) -> TypeGuard[str]:
    return mac_problem(mac) is None  # six hex octets, unicast, not all zero


class VxlanBackend(BridgeBackend):
    name = "vxlan"
    default_ipam = "subnet"
    capabilities = Capabilities()

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        cfg = check_options(ctx.spec.backend_config, _OPTIONS, "vxlan")
        self.vni = _int_option(cfg, "VNI", 1, 0, 2**24 - 1)
        self.port = _int_option(cfg, "Port", 8472, 1, 65535)
        self.direct_routing = cfg.get("DirectRouting", False)
        if not isinstance(self.direct_routing, bool):
            raise ConfigError("vxlan backend: DirectRouting must be true or false")
        if cfg.get("GBP") or cfg.get("Learning"):
            raise ConfigError("vxlan backend: GBP and Learning are not supported",
                              fix="remove them; static FDB entries are programmed per peer")
        self.device = ctx.device_name("vx")
        self.mac = ""
        self.watchdog = Watchdog(f"{self.device}-watchdog", 0.3, self._recreate_device, ctx.log)

    @property
    def mtu(self) -> int:
        return self.ctx.node.mtu - VXLAN_OVERHEAD

    def _mac_file(self):
        return self.ctx.state_dir / "vtep-mac"

    def _wanted_mac(self) -> str:
        info = link_info(self.device)
        if info and info.get("kind") == "vxlan":
            return info["mac"]
        try:
            mac = self._mac_file().read_text().strip()
            if _valid_mac(mac):
                return mac
        except FileNotFoundError:
            pass
        octets = [0x0A] + [random.randrange(256) for _ in range(5)]  # locally administered
        return ":".join(f"{o:02x}" for o in octets)

    def _ensure_device(self) -> None:
        underlay = link_index(self.ctx.node.iface)
        if underlay is None:
            raise BackendError(f"underlay interface {self.ctx.node.iface} does not exist")
        self.mac = self._wanted_mac()
        ensure_vxlan(self.device, vni=self.vni, port=self.port, local=self.ctx.node.public_ip,
                     underlay_index=underlay, mtu=self.mtu, mac=self.mac)
        info = link_info(self.device)
        if info is None:
            raise BackendError(f"{self.device} vanished right after it was created")
        self.mac = info["mac"]
        atomic_write(self._mac_file(), self.mac + "\n")

    def prepare(self) -> dict[str, Any]:
        require_kind("vxlan")
        self._ensure_device()
        return {"VNI": self.vni, "VtepMAC": self.mac}

    def start(self, chunks: tuple[IPv4Network, ...]) -> None:
        super().start(chunks)
        self._address_device()
        self.watchdog.start()

    def chunks_changed(self, chunks: tuple[IPv4Network, ...]) -> None:
        super().chunks_changed(chunks)
        # peers' routes point at the new subnet's network address. Added beside the old one:
        # removing a device's last IPv4 address makes the kernel flush its routes.
        set_address(self.device, IPv4Interface(f"{self.chunks[0].network_address}/32"),
                    exclusive=False)
        self.reprogram_all()

    def _address_device(self) -> None:
        set_address(self.device, IPv4Interface(f"{self.chunks[0].network_address}/32"))

    def _recreate_device(self) -> bool:
        """Watchdog tick: re-create the device (same MAC, same entries) if someone deleted it."""
        if link_index(self.device) is not None:
            return False
        self.ctx.log.warning("VXLAN device %s vanished; re-creating it", self.device)
        self._ensure_device()
        self._address_device()
        self.reprogram_all()
        if self.fast is not None:
            self.fast.attach(self.device, "uplink")
        return True

    def program_peer(self, peer: Peer, subnet: IPv4Network) -> None:
        if self.direct_routing and route_is_direct(peer.public_ip):
            replace_route(subnet, gateway=peer.public_ip, dev=self.ctx.node.iface,
                          within=self.ctx.spec.cidr)
            return
        mac = peer.data.get("VtepMAC") if isinstance(peer.data, dict) else None
        if not _valid_mac(mac):
            raise BackendError(f"lease of {peer.public_ip} has no valid BackendData.VtepMAC "
                               f"({mac!r}); is that node running the vxlan backend?")
        vni = peer.data.get("VNI", self.vni)
        if vni != self.vni:
            raise BackendError(f"peer {peer.public_ip} uses VNI {vni}, this node {self.vni}")
        vtep = IPv4Address(subnet.network_address)
        replace_neigh(self.device, vtep, mac)
        replace_fdb(self.device, mac, peer.public_ip)
        self.onlink_route(subnet, vtep, self.device)

    def peer_problem(self, peer: Peer, subnet: IPv4Network) -> str | None:
        if why := super().peer_problem(peer, subnet):
            return why
        if self.direct_routing:
            return None  # a peer on our segment needs no VTEP; others fail in program_peer
        why = mac_problem(peer.data.get("VtepMAC"))
        return f"BackendData.VtepMAC: {why}" if why else None

    def unprogram_peer(self, peer: Peer, subnet: IPv4Network) -> None:
        vtep = IPv4Address(subnet.network_address)
        delete_route(subnet, gateway=vtep, dev=self.device)
        delete_route(subnet, gateway=peer.public_ip, dev=self.ctx.node.iface)  # DirectRouting
        mac = peer.data.get("VtepMAC") if isinstance(peer.data, dict) else None
        delete_neigh(self.device, vtep)
        if _valid_mac(mac):
            delete_fdb(self.device, mac, peer.public_ip)

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update(device=self.device, vni=self.vni, port=self.port, vtep_mac=self.mac,
                   direct_routing=self.direct_routing, recreated=self.watchdog.repairs)
        return out

    def uplinks(self) -> list[str]:
        return [self.device, self.ctx.node.iface] if self.direct_routing else [self.device]

    def stop(self) -> None:
        self.watchdog.stop(timeout=2)
        super().stop()

    def teardown(self) -> None:
        self.stop()
        super().teardown()
        delete_link(self.device)
        self._mac_file().unlink(missing_ok=True)
