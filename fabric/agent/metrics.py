"""Prometheus ``/metrics`` for the agent (`fabric up --metrics-addr HOST:PORT`).

Everything but the CNI latency histogram is read at scrape time from the agent's
``status()`` by :class:`StatusCollector`: backends and IPAMs keep their counters where
they are (their ``status()``), nothing is double-counted, and a scrape shows the same
numbers as `fabric status`. Names follow Prometheus conventions: ``netfabric_`` prefix,
base units (seconds, bytes), ``_total`` for counters. Every series has ``network``.

The policy engine's families are the policy package's own
(:func:`fabric.policy.metrics.render_metrics`), parsed and served here unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from ipaddress import IPv4Network
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from fabric.errors import ConfigError

__all__ = ["AgentMetrics", "StatusCollector", "parse_addr"]

log = logging.getLogger("fabric.agent")
# CNI ADD spans veth creation and IPAM (10-300 ms); DEL/CHECK are faster; >10 s is a timeout
_CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``:PORT`` / ``[::1]:PORT`` -> (host, port); empty host = all."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics address {text!r} is invalid", field="--metrics-addr",
                          fix="use HOST:PORT, e.g. 0.0.0.0:9402 or 127.0.0.1:9402")
    return host.strip("[]") or "0.0.0.0", int(port)


def _map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (status blocks may be errors)."""
    return value if isinstance(value, Mapping) else {}


def _state(raw: Any) -> str:
    """A peer state word: calico's "Established 5m, 3 received" -> "established"."""
    words = str(raw or "unknown").split()
    return words[0].rstrip(",").lower() if words else "unknown"


def _dataplanes(status: Any, depth: int = 0) -> Iterator[Mapping[str, Any]]:
    """Data-path engine status blocks (tx/rx/drops) anywhere in a backend's status."""
    if not isinstance(status, Mapping) or depth > 3:
        return
    if isinstance(status.get("tx"), Mapping) and isinstance(status.get("drops"), Mapping):
        yield status
        return
    for value in status.values():
        yield from _dataplanes(value, depth + 1)


def _capacity(chunks: list[str]) -> int:
    total = 0
    for c in chunks:
        try:
            net = IPv4Network(c)
        except ValueError:
            continue
        total += net.num_addresses if net.prefixlen >= 31 else net.num_addresses - 2
    return total


def _ipam_use(net: Mapping[str, Any]) -> tuple[int, int]:
    """(used, free) pod addresses of this node: from the chunks (subnet, blocks), or from
    the ring's own accounting (weave: this peer's share of the ring and its free part)."""
    ipam = _map(net.get("ipam_status"))
    ring = _map(ipam.get("ipam"))
    if ring:
        mine = [o for o in ring.get("owners") or [] if o.get("peer") == ipam.get("name")]
        return int(ring.get("allocated_here") or 0), sum(int(o.get("free", 0)) for o in mine)
    used = int(ipam.get("allocations") or 0)
    return used, max(0, _capacity(list(net.get("chunks") or [])) - used)


class StatusCollector:
    """A custom collector: one ``status()`` call per scrape, turned into metric families."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        try:
            st = self._status()
        except Exception:  # a scrape must answer; the failure is a metric of its own
            log.exception("metrics: status failed")
            st = {"networks": []}
        nets = [n for n in st.get("networks") or [] if isinstance(n, Mapping)]
        yield from self._basics(nets)
        yield from self._peers(nets)
        yield from self._dataplane(nets)
        yield from self._policy(st)

    def _basics(self, nets: list[Mapping[str, Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily("netfabric_network_ready", "1 when the network is started",
                               labels=["network", "backend"])
        pods = GaugeMetricFamily("netfabric_pods", "Workload interfaces attached",
                                 labels=["network"])
        addrs = GaugeMetricFamily("netfabric_ipam_addresses",
                                  "Pod addresses of this node's chunks, used or free",
                                  labels=["network", "state"])
        chunks = GaugeMetricFamily("netfabric_ipam_chunks",
                                   "Chunks (lease, blocks, ranges) this node owns",
                                   labels=["network"])
        for n in nets:
            name = str(n.get("name", ""))
            up.add_metric([name, str(n.get("backend", ""))], 1 if n.get("ready") else 0)
            pods.add_metric([name], int(n.get("workloads") or 0))
            used, free = _ipam_use(n)
            addrs.add_metric([name, "used"], used)
            addrs.add_metric([name, "free"], free)
            chunks.add_metric([name], len(n.get("chunks") or []))
        yield from (up, pods, addrs, chunks)

    def _peers(self, nets: list[Mapping[str, Any]]) -> Iterator[Metric]:
        peers = GaugeMetricFamily("netfabric_peers", "Peers of this node by state",
                                  labels=["network", "state"])
        mesh = GaugeMetricFamily("netfabric_mesh_connections",
                                 "Gossip mesh connections by state", labels=["network", "state"])
        bgp = GaugeMetricFamily("netfabric_bgp_sessions_established",
                                "BGP sessions in state Established", labels=["network"])
        bgp_all = GaugeMetricFamily("netfabric_bgp_sessions", "BGP sessions configured",
                                    labels=["network"])
        for n in nets:
            name = str(n.get("name", ""))
            bs, ipam = _map(n.get("backend_status")), _map(n.get("ipam_status"))
            listed = bs.get("peers") if isinstance(bs.get("peers"), list) else ipam.get("peers")
            counts: dict[str, int] = {}
            for p in listed if isinstance(listed, list) else []:
                if isinstance(p, Mapping):
                    key = _state(p.get("state"))
                    counts[key] = counts.get(key, 0) + 1
            for state, count in sorted(counts.items()):
                peers.add_metric([name, state], count)
            conns = _map(bs.get("mesh")).get("connections")
            if isinstance(conns, list):
                by: dict[str, int] = {}
                for c in conns:
                    state = _state(_map(c).get("state"))
                    by[state] = by.get(state, 0) + 1
                for state, count in sorted(by.items()):
                    mesh.add_metric([name, state], count)
            sessions = _map(bs.get("bgp")).get("peers")
            if isinstance(sessions, list):
                bgp.add_metric([name], sum(1 for s in sessions
                                           if _state(_map(s).get("state")) == "established"))
                bgp_all.add_metric([name], len(sessions))
        yield from (peers, mesh, bgp, bgp_all)

    def _dataplane(self, nets: list[Mapping[str, Any]]) -> Iterator[Metric]:
        pkts = CounterMetricFamily("netfabric_dataplane_packets",
                                   "Packets through the user-space data path",
                                   labels=["network", "direction"])
        octets = CounterMetricFamily("netfabric_dataplane_bytes",
                                     "Bytes through the user-space data path",
                                     labels=["network", "direction"])
        drops = CounterMetricFamily("netfabric_dataplane_drops",
                                    "Packets the user-space data path dropped, by reason",
                                    labels=["network", "direction", "reason"])
        for n in nets:
            name = str(n.get("name", ""))
            total: dict[tuple[str, str], int] = {}
            dropped: dict[tuple[str, str], int] = {}
            for dp in _dataplanes(n.get("backend_status")):
                for d in ("tx", "rx"):
                    for key in ("packets", "bytes"):
                        total[(d, key)] = total.get((d, key), 0) + int(_map(dp.get(d)).get(key, 0))
                    for reason, count in _map(_map(dp.get("drops")).get(d)).items():
                        dropped[(d, reason)] = dropped.get((d, reason), 0) + int(count)
            for (d, key), value in sorted(total.items()):
                (pkts if key == "packets" else octets).add_metric([name, d], value)
            for (d, reason), value in sorted(dropped.items()):
                drops.add_metric([name, d, reason], value)
        yield from (pkts, octets, drops)

    @staticmethod
    def _policy(st: Mapping[str, Any]) -> Iterator[Metric]:
        from fabric.policy.metrics import render_metrics  # lazily: only when scraped

        yield from text_string_to_metric_families(render_metrics(st))


class AgentMetrics:
    """The agent's registry: the status collector + the CNI request latency histogram."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status))
        self.cni_latency = Histogram(
            "netfabric_cni_request_duration_seconds",
            "Time the agent spent on one CNI request, by verb and result",
            ["network", "verb", "result"], buckets=_CNI_BUCKETS, registry=self.registry)
        self._server: Any = None
        self._lock = threading.Lock()

    def observe_cni(self, network: str, verb: str, ok: bool, seconds: float) -> None:
        self.cni_latency.labels(network, verb, "ok" if ok else "error").observe(seconds)

    def serve(self, addr: str) -> tuple[str, int]:
        """Serve ``/metrics`` on ``HOST:PORT`` in a daemon thread; returns the bound address."""
        host, port = parse_addr(addr)
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {addr}: {exc.strerror}",
                              field="--metrics-addr",
                              fix="pick a free port / an address of this host") from exc
        with self._lock:
            self._server = server
        return str(server.server_address[0]), int(server.server_address[1])

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
