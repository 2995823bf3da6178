"""Kernel reference rows of ``fabric bench matrix``: the same two-host topology built by plain
iproute2 commands in an agent-less lab, no netfabric code on the packet path or in control.

Both mirror what the kernel backends build (pods on a per-host bridge, the bridge's address as
the pods' gateway, one /24 per host):

- ``kernel-routed`` (host-gw style): the peer's pod /24 routed via the peer's underlay IP;
- ``kernel-vxlan`` (flannel vxlan style): the peer's pod /24 routed onlink via a VXLAN device,
  with a permanent neighbour and an FDB entry naming the peer's underlay IP (MTU 1450).

Pods are namespaces ``nfl-LAB-r<kind><N>`` so the lab's teardown removes them with the lab.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

__all__ = ["KernelReference", "REFERENCES"]

# kind -> (pod network prefix, MTU); 10.250/10.251 stay inside the lab's namespaces
REFERENCES = {"kernel-routed": ("10.250", 1500), "kernel-vxlan": ("10.251", 1450)}
_VNI = 99
_VXLAN_PORT = 4789


def _ip(ns: str, args: Sequence[str]) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                          timeout=20, check=False)
    if proc.returncode != 0:
        from fabric.lab.netns import LabError

        raise LabError(f"reference set-up: {' '.join(args)}: {proc.stderr.strip()}")


class KernelReference:
    """One reference topology on hosts h1 and h2 of an agent-less ``lab``; ``pods`` maps
    the lab-style pod names (``h1`` -> pod) to (namespace, address)."""

    def __init__(self, lab: Any, kind: str) -> None:
        if kind not in REFERENCES:
            raise ValueError(kind)
        self.lab, self.kind = lab, kind
        self.prefix, self.mtu = REFERENCES[kind]
        self.tag = "rr" if kind == "kernel-routed" else "rv"
        self.pods: dict[str, tuple[str, IPv4Address]] = {}

    def pod_ns(self, index: int) -> str:
        return f"{self.lab.topo.prefix}{self.tag}{index}"

    def build(self) -> KernelReference:
        from fabric.lab.netns import add_ns

        hosts = [self.lab.hosts[h] for h in ("h1", "h2")]
        for h in hosts:
            n, ns = h.index, h.ns
            pod_ns, gw = self.pod_ns(n), f"{self.prefix}.{n}.1"
            add_ns(pod_ns)
            br, veth = f"{self.tag}br", f"{self.tag}v{n}"
            _ip(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            _ip(ns, ["ip", "link", "add", br, "type", "bridge"])
            _ip(ns, ["ip", "link", "set", br, "mtu", str(self.mtu), "up"])
            _ip(ns, ["ip", "addr", "add", f"{gw}/24", "dev", br])
            _ip(ns, ["ip", "link", "add", veth, "mtu", str(self.mtu), "type", "veth", "peer",
                     "name", "eth0", "netns", pod_ns])
            _ip(ns, ["ip", "link", "set", veth, "master", br, "up"])
            _ip(pod_ns, ["ip", "link", "set", "lo", "up"])
            _ip(pod_ns, ["ip", "link", "set", "eth0", "up"])
            _ip(pod_ns, ["ip", "addr", "add", f"{self.prefix}.{n}.2/24", "dev", "eth0"])
            _ip(pod_ns, ["ip", "route", "add", "default", "via", gw])
            self.pods[f"h{n}"] = (pod_ns, IPv4Address(f"{self.prefix}.{n}.2"))
        for h, peer in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
            subnet = f"{self.prefix}.{peer.index}.0/24"
            if self.kind == "kernel-routed":
                _ip(h.ns, ["ip", "route", "add", subnet, "via", str(peer.ip), "dev", "eth0"])
                continue
            mac = f"02:00:00:00:99:{peer.index:02x}"
            _ip(h.ns, ["ip", "link", "add", "rvx", "address", f"02:00:00:00:99:{h.index:02x}",
                       "type", "vxlan", "id", str(_VNI), "local", str(h.ip), "dev", "eth0",
                       "dstport", str(_VXLAN_PORT), "nolearning"])
            _ip(h.ns, ["ip", "link", "set", "rvx", "mtu", str(self.mtu), "up"])
            _ip(h.ns, ["ip", "addr", "add", f"{self.prefix}.{h.index}.0/32", "dev", "rvx"])
            gw = f"{self.prefix}.{peer.index}.0"
            _ip(h.ns, ["ip", "neigh", "replace", gw, "lladdr", mac, "dev", "rvx", "nud",
                       "permanent"])
            _ip(h.ns, ["bridge", "fdb", "append", mac, "dev", "rvx", "dst", str(peer.ip)])
            _ip(h.ns, ["ip", "route", "add", subnet, "via", gw, "dev", "rvx", "onlink"])
        return self

    def target(self, pod: str) -> tuple[str, IPv4Address]:
        return self.pods[pod]
