"""Value types the lab returns: hosts, pods and the outcome of each check."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import attrs

__all__ = [
    "HostInfo",
    "PodInfo",
    "ExecResult",
    "PingPair",
    "PingResult",
    "TcpResult",
    "IperfResult",
    "DownReport",
]


def _json(inst: Any) -> dict[str, Any]:
    return attrs.asdict(inst, value_serializer=lambda _i, _a, v: (
        str(v) if isinstance(v, IPv4Address | IPv4Interface) else v))


@attrs.frozen
class HostInfo:
    """One emulated host of a lab: namespace, underlay address, agent state directory."""

    name: str  # "h1"
    index: int
    ns: str
    segment: int
    address: IPv4Interface  # underlay eth0
    state_dir: str
    socket: str  # the agent's control socket

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HostInfo:
        return cls(**{**d, "address": IPv4Interface(d["address"])})


@attrs.frozen
class PodInfo:
    """One pod of a lab: its namespace, host and the address its CNI ADD returned."""

    name: str  # "h1p1"
    host: str
    ns: str
    address: IPv4Interface  # from the CNI result
    container_id: str
    ifname: str = "eth0"
    mac: str = ""
    network: str = ""
    namespace: str = "default"
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip

    def to_json(self) -> dict[str, Any]:
        d = _json(self)
        d["labels"] = dict(self.labels)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PodInfo:
        return cls(**{**d, "address": IPv4Interface(d["address"])})


@attrs.frozen
class ExecResult:
    """A command run in a lab host or pod: exit code and output."""

    target: str
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@attrs.frozen
class _Between:
    """Two lab targets (pod, host or namespace names) and the address tried."""

    src: str
    dst: str
    dst_ip: IPv4Address


@attrs.frozen
class PingPair(_Between):
    """One ping from ``src`` to ``dst``: whether it answered and its round-trip time."""

    ok: bool
    rtt_ms: float | None = None
    error: str = ""


@attrs.frozen
class PingResult:
    """Pings between pod pairs; ``ok`` when all answered, ``summary()`` names failures."""

    pairs: tuple[PingPair, ...]

    @property
    def ok(self) -> bool:
        return bool(self.pairs) and all(p.ok for p in self.pairs)

    @property
    def failures(self) -> tuple[PingPair, ...]:
        return tuple(p for p in self.pairs if not p.ok)

    @property
    def loss(self) -> float:
        return len(self.failures) / len(self.pairs) if self.pairs else 1.0

    def summary(self) -> str:
        bad = ", ".join(f"{p.src}->{p.dst}" for p in self.failures)
        return f"{len(self.pairs) - len(self.failures)}/{len(self.pairs)} ok" + (
            f"; failed: {bad}" if bad else "")


@attrs.frozen
class TcpResult(_Between):
    """A TCP connect-and-echo check between two lab targets."""

    port: int
    ok: bool
    connect_ms: float | None = None
    error: str = ""


@attrs.frozen
class IperfResult(_Between):
    """One iperf3 TCP run between two lab targets: throughput and retransmits."""

    gbps: float  # received throughput
    retransmits: int
    seconds: float
    streams: int = 1
    cpu_sender: float | None = None  # iperf3's % CPU of the client (host_total)
    cpu_receiver: float | None = None  # ... and of the server (remote_total)

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@attrs.frozen
class DownReport:
    """What tearing a lab down did: processes stopped, namespaces deleted, leftovers."""

    name: str
    stopped: tuple[str, ...]  # roles of processes ended
    namespaces: tuple[str, ...]  # namespaces deleted
    # what could not be removed, and processes the lab did not start that still ran in
    # its namespaces (reported, never killed: end them by pid yourself)
    leftover: tuple[str, ...] = ()
