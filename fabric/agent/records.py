"""The agent's records of attached workloads (``workloads.json``) and the CNI result shape.

Records are read back after a restart (CHECK, GC, DEL without a netns, policy endpoints); a
malformed one is logged and skipped, never fatal.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from fabric.api import Allocation, Endpoint, Workload

__all__ = ["endpoint_to_result", "endpoint_record", "workload_from_record",
           "endpoint_from_record"]

log = logging.getLogger("fabric.agent")


def endpoint_to_result(ep: Endpoint) -> dict[str, Any]:
    """CNI 1.x-shaped result (the plugin converts to the runtime's version)."""
    return {
        "interfaces": [
            {"name": ep.host_ifname},
            {"name": ep.workload.ifname, "mac": ep.mac, "sandbox": ep.workload.netns,
             "mtu": ep.mtu},
        ],
        "ips": [
            {
                "address": str(a),
                **({"gateway": str(ep.gateway)} if ep.gateway else {}),
                "interface": 1,
            }
            for a in ep.addresses
        ],
        "routes": [
            {"dst": str(r.dst), **({"gw": str(r.gateway)} if r.gateway else {})}
            for r in ep.routes
        ],
        "dns": dict(ep.dns),
    }


def endpoint_record(ep: Endpoint, alloc: Allocation) -> dict[str, Any]:
    """What the agent persists of an attached workload (<state>/workloads.json)."""
    wl = ep.workload
    return {
        "container_id": wl.container_id,
        "ifname": wl.ifname,
        "netns": wl.netns,
        "name": wl.name,
        "namespace": wl.namespace,
        "labels": dict(wl.labels),
        "host_ifname": ep.host_ifname,
        "mac": ep.mac,
        "addresses": [str(a) for a in ep.addresses],
        "gateway": str(ep.gateway) if ep.gateway else None,
        "mtu": ep.mtu,
        "ip": str(alloc.ip),
    }


def workload_from_record(rec: dict[str, Any]) -> Workload:
    return Workload(
        container_id=rec["container_id"],
        ifname=rec["ifname"],
        netns=rec.get("netns", ""),
        name=rec.get("name", ""),
        namespace=rec.get("namespace", "default"),
        labels=rec.get("labels", {}),
    )


def endpoint_from_record(rec: dict[str, Any]) -> Endpoint | None:
    try:
        return Endpoint(
            workload=workload_from_record(rec),
            host_ifname=rec["host_ifname"],
            mac=rec.get("mac", ""),
            addresses=tuple(IPv4Interface(a) for a in rec["addresses"]),
            gateway=IPv4Address(rec["gateway"]) if rec.get("gateway") else None,
            routes=(),
            mtu=int(rec.get("mtu", 1500)),
        )
    except (KeyError, ValueError) as exc:
        log.error("ignoring a malformed workload record %r: %s", rec, exc)
        return None
