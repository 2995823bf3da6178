"""IP masquerade for traffic leaving a pod network (flannel's --ip-masq), with nftables.

One table per network, replaced in a single `nft -j -f -` transaction: traffic
inside the network is left alone, traffic from the network to anywhere else
(but multicast) is masqueraded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from ipaddress import IPv4Network

from fabric.errors import BackendError

__all__ = ["apply_masquerade", "remove_masquerade", "masq_table"]


def masq_table(network_name: str) -> str:
    return f"netfabric-masq-{network_name}"


def _prefix(net: IPv4Network) -> dict:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _match(field: str, op: str, net: IPv4Network) -> dict:
    return {"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": field}},
                      "right": _prefix(net)}}


def _nft(batch: list[dict]) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise BackendError("nft is not installed; ipMasq needs nftables",
                           fix="apt-get install nftables, or set ipMasq: false")
    res = subprocess.run([nft, "-j", "-f", "-"], input=json.dumps({"nftables": batch}),
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise BackendError(f"nft failed: {res.stderr.strip()}")


def apply_masquerade(network_name: str, cidr: IPv4Network) -> None:
    table = {"family": "ip", "name": masq_table(network_name)}
    chain = {**{"family": "ip", "table": table["name"]}, "name": "postrouting"}
    rule = {"family": "ip", "table": table["name"], "chain": "postrouting"}
    multicast = IPv4Network("224.0.0.0/4")
    _nft([
        {"add": {"table": table}},
        {"flush": {"table": table}},
        {"add": {"chain": {**chain, "type": "nat", "hook": "postrouting", "prio": 100,
                           "policy": "accept"}}},
        {"add": {"rule": {**rule, "expr": [_match("saddr", "==", cidr),
                                           _match("daddr", "==", cidr), {"return": None}]}}},
        {"add": {"rule": {**rule, "expr": [_match("saddr", "==", cidr),
                                           _match("daddr", "!=", multicast),
                                           {"masquerade": None}]}}},
    ])


def remove_masquerade(network_name: str) -> None:
    table = {"family": "ip", "name": masq_table(network_name)}
    with contextlib.suppress(BackendError):  # nft missing: nothing of ours can exist
        _nft([{"add": {"table": table}}, {"delete": {"table": table}}])
