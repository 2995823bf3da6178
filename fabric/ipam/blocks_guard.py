"""Blocks IPAM records are untrusted (a mixin of :class:`fabric.ipam.blocks.BlockIPAM`):
block and node records are checked as they are read (refused ones reported, never peers
or routes), our own blocks overwritten with garbage are written back from our
allocations, and a full pool reclaims blocks whose keys hold invalid records."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import Any

from fabric.errors import StoreError
from fabric.ipam.block_record import (
    Block,
    block_key,
    check_block,
    check_node,
    parse_block_key,
    replace_invalid,
)

__all__ = ["BlockGuard"]


class BlockGuard:
    """Needs the IPAM's ctx, store, prefix, me, block_size, refused, _damaged, _allocs,
    _blocks, _lock and _list."""

    ctx: Any
    store: Any
    prefix: str
    me: str
    block_size: int
    refused: Any
    _damaged: set[IPv4Network]
    _allocs: dict
    _blocks: dict
    _lock: Any

    def _list(self) -> int:
        raise NotImplementedError

    def _ingest(self, key: str, value: str, blocks: dict, nodes: dict) -> None:
        rel = key[len(self.prefix) + 1:]
        if rel.startswith("blocks/") and (cidr := parse_block_key(key)) is not None:
            old = blocks.pop(cidr, None)
            if not value:
                self.refused.accept(key)
                return
            block, why = check_block(cidr, value, self.ctx.spec.cidr, self.block_size)
            if block is None:  # never a peer's subnet, never a route
                self.refused.refuse(key, why, value)
                if old is not None and old.affinity == self.me:
                    self._damaged.add(cidr)  # garbage over our own block: write it back
                return
            self.refused.accept(key)
            blocks[cidr] = block
        elif rel.startswith("nodes/"):
            name = rel[len("nodes/"):]
            nodes.pop(name, None)
            if not value:
                self.refused.accept(key)
                return
            own = None if name == self.me else self.ctx.node.public_ip
            if why := check_node(name, value, self.ctx.spec.cidr, own):
                self.refused.refuse(key, why, value)
                return
            self.refused.accept(key)
            nodes[name] = json.loads(value)

    def _repair(self) -> None:
        """Re-assert our blocks over invalid records, rebuilt from our own allocations."""
        with self._lock:
            damaged, self._damaged = self._damaged, set()
        for cidr in damaged:
            with self._lock:
                mine = {int(a.ip) - int(cidr.network_address): {"handle": h.key(), "node": self.me}
                        for h, a in self._allocs.items() if a.chunk == cidr}
            block = Block(cidr, self.me, mine)
            try:
                done = replace_invalid(self.store, block_key(self.prefix, cidr), block,
                                       self.ctx.spec.cidr, self.block_size)
            except StoreError as exc:
                self.ctx.log.error("could not re-assert block %s: %s", cidr, exc)
                continue
            if done:
                self.ctx.log.warning("block %s held an invalid record; re-asserted it with this "
                                     "node's %d allocation(s)", cidr, len(mine))
                with self._lock:
                    self._blocks[cidr] = block

    def _reclaim_invalid(self, candidates: list[IPv4Network]) -> IPv4Network | None:
        """The pool is full: take a block whose key holds an invalid record."""
        for cidr in candidates:
            key = block_key(self.prefix, cidr)
            if key in self.refused and replace_invalid(
                    self.store, key, Block(cidr, self.me), self.ctx.spec.cidr, self.block_size):
                self.ctx.log.warning("reclaimed block %s: its key held an invalid record", cidr)
                self._list()
                return cidr
        return None
