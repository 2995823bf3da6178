"""Records other nodes write (leases, blocks, node records, BGP routes) are untrusted input.

Every check returns ``None`` when the value is acceptable, else the reason as a short
sentence; callers refuse the record before anything touches the kernel and report it
through a :class:`Refusals` log (status + one log line per key and content). This is the
root fix for forged leases such as ``0.0.0.0-0`` (a route that replaced every host's
default route) or the underlay's own subnet (it replaced the connected route).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

__all__ = [
    "subnet_problem",
    "public_ip_problem",
    "mac_problem",
    "vni_problem",
    "peer_problem",
    "Refusals",
]

_LIMITED_BROADCAST = IPv4Address("255.255.255.255")


def subnet_problem(subnet: IPv4Network, network: IPv4Network,
                   length: int | None = None) -> str | None:
    """Why ``subnet`` may not be a peer's chunk of ``network`` (None: it may).

    It must lie inside the network, be strictly smaller than it (a chunk as large as the
    whole network would capture every pod address) and, when ``length`` is given, have
    exactly that prefix length (``SubnetLen`` / ``BlockSize``)."""
    if not isinstance(subnet, IPv4Network):
        return f"{subnet!r} is not an IPv4 subnet"
    if not subnet.subnet_of(network):
        return f"subnet {subnet} is outside the network {network}"
    if subnet.prefixlen <= network.prefixlen:
        return f"subnet {subnet} is the whole network {network}, not a chunk of it"
    if length is not None and subnet.prefixlen != length:
        return f"subnet {subnet} is not a /{length} (the network's subnet length)"
    return None


def public_ip_problem(ip: Any, network: IPv4Network,
                      own: IPv4Address | None = None) -> str | None:
    """Why ``ip`` may not be a peer's underlay address: it must be a unicast IPv4 address
    outside the pod network, and not this node's own (unless ``own`` is None)."""
    try:
        addr = ip if isinstance(ip, IPv4Address) else IPv4Address(str(ip))
    except ValueError:
        return f"PublicIP {ip!r} is not an IPv4 address"
    if (addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local
            or addr == _LIMITED_BROADCAST or addr in IPv4Network("240.0.0.0/4")
            or addr in IPv4Network("0.0.0.0/8")):
        return f"PublicIP {addr} is not a unicast host address"
    if addr in network:
        return f"PublicIP {addr} lies inside the pod network {network}"
    if own is not None and addr == own:
        return f"PublicIP {addr} is this node's own address"
    return None


def mac_problem(mac: Any) -> str | None:
    """Why ``mac`` may not be a peer's VTEP MAC: six hex octets, unicast, not all zero."""
    parts = mac.split(":") if isinstance(mac, str) else []
    if len(parts) != 6 or not all(
            len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        return f"MAC {mac!r} is not six hex octets"
    octets = [int(p, 16) for p in parts]
    if octets[0] & 1:
        return f"MAC {mac} is a multicast/broadcast address"
    if not any(octets):
        return f"MAC {mac} is all zero"
    return None


def vni_problem(vni: Any) -> str | None:
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni < 2**24:
        return f"VNI {vni!r} is not an integer in [0, 2^24)"
    return None


def peer_problem(subnets: Any, public_ip: Any, data: Any, network: IPv4Network,
                 length: int | None = None, own: IPv4Address | None = None) -> str | None:
    """The checks every record another node writes passes: its chunks, its address and
    the well-formedness of the backend data fields netfabric's backends read."""
    for s in subnets:
        if why := subnet_problem(s, network, length):
            return why
    if why := public_ip_problem(public_ip, network, own):
        return why
    if not isinstance(data, Mapping):
        return f"BackendData {data!r} is not an object"
    if "VtepMAC" in data and (why := mac_problem(data["VtepMAC"])):
        return f"BackendData.VtepMAC: {why}"
    if "VNI" in data and (why := vni_problem(data["VNI"])):
        return f"BackendData.{why}"
    port = data.get("Port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 0 < port < 65536):
        return f"BackendData.Port {port!r} is not a port number"
    return None


class Refusals:
    """Records refused by one component, keyed by datastore key: shown in status, logged
    once per key and content (a record rewritten with other garbage is logged again)."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what  # "lease", "block", "node record", "route"
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}

    def refuse(self, key: str, reason: str, content: Any = "") -> None:
        digest = hashlib.sha1(repr(content).encode()).hexdigest()[:12]
        with self._lock:
            old = self._items.get(key)
            if old is not None and old["digest"] == digest:
                return
            self._items[key] = {"key": key, "reason": reason, "digest": digest,
                                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.log.error("refused %s %s: %s (value %.80r)", self.what, key, reason, content)

    def accept(self, key: str) -> None:
        """``key`` is valid (again) or gone: no longer reported."""
        with self._lock:
            if self._items.pop(key, None) is not None:
                self.log.info("%s %s is valid again or gone", self.what, key)

    def keep_only(self, keys: set[str]) -> None:
        """Forget refusals of keys that no longer exist."""
        with self._lock:
            for k in set(self._items) - keys:
                del self._items[k]

    def status(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"key": v["key"], "reason": v["reason"], "since": v["since"]}
                    for v in sorted(self._items.values(), key=lambda v: v["key"])]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items
