"""Human-readable rendering of the agent's status (like `weave status`, `calicoctl node status`)."""

from __future__ import annotations

from typing import Any

from fabric.table import format_table

__all__ = ["render_status"]


def _kv(rows: list[tuple[str, Any]], indent: int = 2) -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{' ' * indent}{k.rjust(width)}: {v}" for k, v in rows]


def _peers_table(peers: list[dict[str, Any]]) -> list[str]:
    if not peers:
        return ["    (no peers)"]
    cols = ["name", "public_ip", "subnets", "state"]
    return format_table(peers, cols, headers=[c.upper() for c in cols], indent="    ")\
        .splitlines()


def _value(key: str, value: Any, indent: int) -> list[str]:
    """Scalars on one line; mappings and lists of mappings nested below their key."""
    pad = " " * indent
    if isinstance(value, dict):
        out = [f"{pad}{key}:"]
        for k, v in value.items():
            out += _value(str(k), v, indent + 2)
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = [f"{pad}{key}:"]
        for item in value:
            out.append(f"{pad}  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
        return out
    return [f"{pad}{key}: {value}"]


def _datastore(health: Any) -> str:
    if not isinstance(health, dict):
        return "-"
    if health.get("reachable") is None:
        return "not checked yet"
    if health["reachable"]:
        return f"reachable (since {health.get('since')})"
    return (f"UNREACHABLE since {health.get('since')} ({health.get('down_for')} s): "
            f"{health.get('error')}")


def render_status(status: dict[str, Any]) -> str:
    node = status.get("node", {})
    lines = ["Node:"]
    lines += _kv([("name", node.get("name")), ("public ip", node.get("public_ip")),
                  ("interface", f"{node.get('iface')} (mtu {node.get('mtu')})"),
                  ("etcd", status.get("etcd") or "-"),
                  ("datastore", _datastore(status.get("datastore"))),
                  ("agent", f"{status.get('version')} pid {status.get('pid')} "
                            f"up {status.get('uptime')}s")])
    for net in status.get("networks", []):
        lines.append("")
        lines.append(f"Network {net.get('name')}:")
        lines += _kv([("backend", net.get("backend")), ("ipam", net.get("ipam")),
                      ("policy", net.get("policy")), ("network", net.get("network")),
                      ("state", "ready" if net.get("ready") else "starting"),
                      ("chunks", ", ".join(net.get("chunks") or []) or "-"),
                      ("mtu", net.get("mtu")), ("workloads", net.get("workloads"))])
        ipam = net.get("ipam_status") or {}
        if isinstance(ipam.get("ipam"), dict) and "connections" in ipam:
            # weave-style ring IPAM: render like `weave status` / `weave status ipam`
            from fabric.ipam.ring_status import render_ipam
            from fabric.ipam.ring_status import render_status as render_mesh

            for block in (render_mesh(ipam), render_ipam(ipam)):
                lines += ["  " + line for line in block.splitlines()]
        if ipam.get("lease"):
            lines += _kv([("lease", ipam.get("lease")), ("expires", ipam.get("expiry", "-"))])
        peers = ipam.get("peers")
        backend = net.get("backend_status") or {}
        if isinstance(backend.get("peers"), list) and backend["peers"] and isinstance(
            backend["peers"][0], dict
        ):
            peers = backend["peers"]
        if isinstance(peers, list):
            lines.append("  peers:")
            lines += _peers_table([p if isinstance(p, dict) else {"name": p} for p in peers])
        for key, value in backend.items():
            if key != "peers":
                lines += _value(key, value, 2)
        for r in net.get("refused") or []:
            lines.append(f"  REFUSED {r.get('key') or r.get('subnet')}: {r.get('reason')}")
        if net.get("last_peer_error"):
            lines.append(f"  last peer error: {net['last_peer_error']}")
    return "\n".join(lines)
