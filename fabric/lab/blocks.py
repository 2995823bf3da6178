"""Underlay partitions: `fabric lab block h1 h2 [--proto udp] [--port 8472]`.

The switch namespace's bridges have bridge netfilter off, so blocking uses the nftables
``bridge`` family there: one table ``nfl-NAME`` with chains on the forward hook (host to
host, host to router) and the input/output hooks (host to the switch's own address,
where etcd and BIRD listen). A block is a set of drop rules carrying one comment (its
key), in both directions; unblock deletes exactly the rules with that comment. The
table itself is the record: ``list_blocks`` reads it back, so any process sees the
same blocks.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Address

import attrs

from fabric.errors import ConfigError, NotFound
from fabric.lab.netns import LabError, run

__all__ = ["Block", "table_name", "add_block", "remove_block", "list_blocks"]

_CHAINS = ("forward", "input", "output")
_PROTOS = ("tcp", "udp", "icmp")
_KEY = re.compile(r"^nfl-block (\S+) (\S+) (\S+) (\d+)$")


@attrs.frozen
class Block:
    """Traffic dropped between two underlay endpoints (both directions)."""

    a: str  # host names as given, in sorted order: the block of (h2, h1) is the one of (h1, h2)
    b: str
    proto: str | None = None  # None: every protocol
    port: int | None = None  # with tcp/udp (or both when proto is None): source or dest port

    @property
    def key(self) -> str:
        return f"nfl-block {self.a} {self.b} {self.proto or 'any'} {self.port or 0}"

    def describe(self) -> str:
        what = " ".join(x for x in (self.proto or "", f"port {self.port}" if self.port else "")
                        if x)
        return f"{self.a} <-/-> {self.b}" + (f" ({what})" if what else "")

    def to_json(self) -> dict[str, object]:
        return {"a": self.a, "b": self.b, "proto": self.proto, "port": self.port}

    @classmethod
    def make(cls, a: str, b: str, proto: str | None = None, port: int | None = None) -> Block:
        if a == b:
            raise ConfigError(f"cannot block {a} from itself", fix="name two different hosts")
        if proto is not None and proto not in _PROTOS:
            raise ConfigError(f"protocol {proto!r} is not supported", field="proto",
                              fix=f"use one of {', '.join(_PROTOS)} (or none: all traffic)")
        if port is not None:
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"port {port!r} is not 1-65535", field="port")
            if proto == "icmp":
                raise ConfigError("icmp has no ports", field="port",
                                  fix="use --proto tcp or udp with --port")
        x, y = sorted((a, b))
        return cls(x, y, proto, port)

    @classmethod
    def from_key(cls, key: str) -> Block | None:
        m = _KEY.match(key)
        if not m:
            return None
        proto = None if m.group(3) == "any" else m.group(3)
        return cls(m.group(1), m.group(2), proto, int(m.group(4)) or None)


def table_name(lab: str) -> str:
    return f"nfl-{lab}"


def _match(proto: str | None, port: int | None) -> list[str]:
    """nft match expressions after the addresses: one list entry per rule."""
    if port is None:
        return [f"ip protocol {proto}" if proto else ""]
    l4 = f"meta l4proto {proto}" if proto else "meta l4proto { tcp, udp }"
    return [f"{l4} th dport {port}", f"{l4} th sport {port}"]


def add_block(sw_ns: str, lab: str, block: Block, ips: tuple[IPv4Address, IPv4Address]) -> None:
    """Install ``block`` (idempotent: an existing block with the same key stays as it is)."""
    if block in list_blocks(sw_ns, lab):
        return
    table = table_name(lab)
    lines = [f"add table bridge {table}"]
    for chain in _CHAINS:
        lines.append(f"add chain bridge {table} {chain} {{ type filter hook {chain} "
                     "priority 0; policy accept; }")
    a, b = ips
    for chain in _CHAINS:
        for src, dst in ((a, b), (b, a)):
            for match in _match(block.proto, block.port):
                lines.append(f"add rule bridge {table} {chain} ip saddr {src} ip daddr {dst} "
                             f"{match} counter drop comment \"{block.key}\"")
    run(["nft", "-f", "-"], ns=sw_ns, input="\n".join(lines) + "\n")


def _rules(sw_ns: str, lab: str) -> list[dict]:
    try:
        out = run(["nft", "-j", "list", "table", "bridge", table_name(lab)], ns=sw_ns,
                  check=False)
    except LabError:  # nft not installed: nothing can be blocked
        return []
    if out.returncode != 0:
        return []  # no table: nothing blocked
    items = json.loads(out.stdout).get("nftables", [])
    return [i["rule"] for i in items if "rule" in i]


def list_blocks(sw_ns: str, lab: str) -> list[Block]:
    """The blocks in force, read back from the switch's table."""
    seen: dict[str, Block] = {}
    for rule in _rules(sw_ns, lab):
        blk = Block.from_key(rule.get("comment", ""))
        if blk is not None:
            seen.setdefault(blk.key, blk)
    return list(seen.values())


def remove_block(sw_ns: str, lab: str, block: Block) -> int:
    """Delete exactly the rules of ``block``; NotFound (listing the blocks) if it is absent."""
    table = table_name(lab)
    doomed = [r for r in _rules(sw_ns, lab) if r.get("comment") == block.key]
    if not doomed:
        active = ", ".join(b.describe() for b in list_blocks(sw_ns, lab)) or "none"
        raise NotFound(f"no block {block.describe()} in lab {lab}",
                       fix=f"active blocks: {active}")
    lines = [f"delete rule bridge {table} {r['chain']} handle {r['handle']}" for r in doomed]
    run(["nft", "-f", "-"], ns=sw_ns, input="\n".join(lines) + "\n")
    return len(doomed)
