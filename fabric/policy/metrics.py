"""Policy drop counters in the Prometheus text format (from the agent's ``status``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["render_metrics"]


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(status: Mapping[str, Any], node: str = "") -> str:
    """``netfabric_policy_*`` series for every network of one agent's status answer."""
    node = node or str((status.get("node") or {}).get("name", ""))
    lines = [
        "# HELP netfabric_policy_drops_total Packets dropped by network policy.",
        "# TYPE netfabric_policy_drops_total counter",
        "# HELP netfabric_policy_endpoint_drops_total Packets dropped per endpoint.",
        "# TYPE netfabric_policy_endpoint_drops_total counter",
        "# HELP netfabric_policy_policies Policies in force.",
        "# TYPE netfabric_policy_policies gauge",
        "# HELP netfabric_policy_transactions_total nft transactions applied.",
        "# TYPE netfabric_policy_transactions_total counter",
    ]
    for net in status.get("networks", []):
        ps = net.get("policy_status") or {}
        base = f'node="{_esc(node)}",network="{_esc(str(net.get("name", "")))}"'
        if "policies" in ps:
            lines.append(f"netfabric_policy_policies{{{base}}} {int(ps['policies'])}")
        if "transactions" in ps:
            lines.append(f"netfabric_policy_transactions_total{{{base}}} "
                         f"{int(ps['transactions'])}")
        drops = ps.get("drops") or {}
        for key, metric, label in (("policies", "netfabric_policy_drops_total", "policy"),
                                   ("endpoints", "netfabric_policy_endpoint_drops_total",
                                    "endpoint")):
            for name, per_dir in sorted((drops.get(key) or {}).items()):
                for direction, packets in sorted(per_dir.items()):
                    lines.append(f'{metric}{{{base},{label}="{_esc(name)}",'
                                 f'direction="{direction}"}} {int(packets)}')
    return "\n".join(lines) + "\n"
