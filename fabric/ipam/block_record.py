"""Calico block records in etcd: ``<prefix>/blocks/<a.b.c.d-len>`` (see fabric.ipam.blocks)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import attrs

from fabric.errors import IPAMError
from fabric.net.validate import mac_problem, public_ip_problem, subnet_problem

__all__ = ["Block", "block_key", "parse_block_key", "check_block", "check_node",
           "replace_invalid"]


def block_key(prefix: str, cidr: IPv4Network) -> str:
    return f"{prefix}/blocks/{cidr.network_address}-{cidr.prefixlen}"


def parse_block_key(key: str) -> IPv4Network | None:
    name = key.rsplit("/", 1)[-1]
    try:
        return IPv4Network(name.replace("-", "/"))
    except ValueError:
        return None


@attrs.define
class Block:
    """One block record: its CIDR, the node it is affine to, and who holds which ordinal."""

    cidr: IPv4Network
    affinity: str | None = None
    allocations: dict[int, dict[str, str]] = attrs.field(factory=dict)

    def encode(self) -> str:
        allocs = {str(k): v for k, v in sorted(self.allocations.items())}
        return json.dumps({"cidr": str(self.cidr), "affinity": self.affinity,
                           "allocations": allocs}, sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> Block:
        try:
            raw = json.loads(text)
            cidr = IPv4Network(raw["cidr"])
            allocs = {}
            for k, v in dict(raw.get("allocations") or {}).items():
                ordinal = int(k)
                if not 0 <= ordinal < cidr.num_addresses or not isinstance(v, dict):
                    raise ValueError(f"bad allocation {k!r}")
                allocs[ordinal] = {"handle": str(v["handle"]), "node": str(v["node"])}
            affinity = raw.get("affinity")
            if affinity is not None and not isinstance(affinity, str):
                raise ValueError("affinity is not a string")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IPAMError(f"block record is corrupt: {exc}: {text[:120]!r}",
                            fix="delete the block key in etcd if no pod uses it") from exc
        return cls(cidr, affinity, allocs)

    def ip(self, ordinal: int) -> IPv4Address:
        return self.cidr.network_address + ordinal

    def free_ordinal(self) -> int | None:
        return next((o for o in range(self.cidr.num_addresses) if o not in self.allocations),
                    None)

    def copy(self) -> Block:
        return Block(self.cidr, self.affinity, {k: dict(v) for k, v in self.allocations.items()})


# Records other nodes write are untrusted: checked before they become peers or routes.
def check_block(cidr: IPv4Network, value: str, network: IPv4Network,
                size: int) -> tuple[Block | None, str]:
    """(the block, "") or (None, why it is refused)."""
    try:
        block = Block.decode(value)
    except IPAMError as exc:
        return None, str(exc)
    why = subnet_problem(cidr, network, size) or (
        f"its cidr {block.cidr} differs from the key" if block.cidr != cidr else None)
    return (None, why) if why else (block, "")


def check_node(name: str, value: str, network: IPv4Network,
               own: IPv4Address | None) -> str | None:
    """Why a node record may not become a peer (None: it may)."""
    try:
        rec = json.loads(value)
        if not isinstance(rec, dict) or rec.get("name", name) != name:
            return "not a node record of this name"
        if why := public_ip_problem(rec["public_ip"], network, own):
            return why
    except (ValueError, KeyError, TypeError) as exc:
        return f"malformed: {exc!r}"
    data = rec.get("backend_data") or {}
    if not isinstance(data, dict):
        return "backend_data is not an object"
    if "VtepMAC" in data and (why := mac_problem(data["VtepMAC"])):
        return f"backend_data.VtepMAC: {why}"
    return None


def replace_invalid(store: Any, key: str, block: Block, network: IPv4Network, size: int) -> bool:
    """Write ``block`` over the key only while it still holds an invalid record (a
    compare-and-swap on that record's revision): garbage never holds a block for good,
    and a valid record written meanwhile is never overwritten."""
    kv = store.get(key)
    if kv is None:
        return bool(store.create(key, block.encode()))
    if check_block(block.cidr, kv.value, network, size)[0] is not None:
        return False  # valid again
    return bool(store.compare_and_swap(key, block.encode(), kv.mod_revision))
