"""Calico-style block IPAM (``fabric.ipam`` plugin ``blocks``), kept in etcd.

The network's pool is cut into blocks (``/26`` by default). A node *claims*
blocks with affinity and hands out pod addresses inside them, one per handle
(container id + ifname). When no block is free it borrows an address from
another node's block unless ``StrictAffinity`` is set; a borrowed address is
reported among the node's chunks as a ``/32`` so the backend announces it.
A block whose last address is released is given back to the pool.

Keys under the network's prefix::

    <prefix>/nodes/<node>            {"name", "public_ip", "backend_type", "backend_data"}
    <prefix>/blocks/<a.b.c.d-len>    {"cidr", "affinity", "allocations": {ordinal: {handle, node}}}

Every block write is a compare-and-swap on the key's mod_revision (creation
is ``create``), retried on conflict, so concurrent agents never hand out one
address twice. ``ipam_config`` options: ``BlockSize`` (20-32, default 26),
``StrictAffinity`` (default false).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import attrs

from fabric.api import (
    IPAM,
    Allocation,
    ChunksCallback,
    Handle,
    NetworkContext,
    Peer,
    PeerEvent,
    PeersCallback,
)
from fabric.errors import ConfigError, IPAMError, PoolExhausted
from fabric.ipam.block_record import Block, block_key, parse_block_key
from fabric.ipam.blocks_guard import BlockGuard
from fabric.net.validate import Refusals
from fabric.store.base import WatchEvent
from fabric.store.sync import PrefixMirror

__all__ = ["Block", "BlockIPAM", "block_key", "parse_block_key"]

_RETRIES = 12


class BlockIPAM(BlockGuard, IPAM):
    name = "blocks"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        cfg = dict(ctx.spec.ipam_config)
        unknown = set(cfg) - {"BlockSize", "StrictAffinity"}
        if unknown:
            raise ConfigError(f"blocks IPAM: unknown option(s) {', '.join(sorted(unknown))}",
                              fix="valid: BlockSize, StrictAffinity")
        size = cfg.get("BlockSize", 26)
        if isinstance(size, bool) or not isinstance(size, int) or not 20 <= size <= 32:
            raise ConfigError(
                f"blocks IPAM: BlockSize must be an integer in [20, 32], got {size!r}")
        if size < ctx.spec.cidr.prefixlen:
            raise ConfigError(
                f"blocks IPAM: BlockSize /{size} is larger than the pool {ctx.spec.cidr}",
                fix=f"use a BlockSize >= {ctx.spec.cidr.prefixlen}")
        self.block_size = size
        self.strict = cfg.get("StrictAffinity", False)
        if not isinstance(self.strict, bool):
            raise ConfigError("blocks IPAM: StrictAffinity must be true or false")
        self.prefix = ctx.spec.prefix
        self.me = ctx.node.name
        self._blocks: dict[IPv4Network, Block] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._peers: dict[str, Peer] = {}
        self._allocs: dict[Handle, Allocation] = {}
        self._lock = threading.RLock()
        self._on_peers: PeersCallback | None = None
        self._on_chunks: ChunksCallback | None = None
        self._mirror: PrefixMirror | None = None
        self.conflicts = 0
        self.refused = Refusals(ctx.log, "record")  # blocks/node records kept from the kernel
        self._damaged: set[IPv4Network] = set()  # own blocks overwritten with garbage

    # -- store access --
    @property
    def store(self):
        if self.ctx.store is None:
            raise ConfigError("the blocks IPAM needs etcd", fix="start the agent with --etcd URL")
        return self.ctx.store

    def _list(self) -> int:
        kvs, rev = self.store.get_prefix(self.prefix + "/")
        blocks, nodes = {}, {}
        for kv in kvs:
            self._ingest(kv.key, kv.value, blocks, nodes)
        with self._lock:
            self._blocks, self._nodes = blocks, nodes
        return rev

    def _mutate(self, cidr: IPv4Network, change: Callable[[Block], Block | None]) -> Block | None:
        """Read-modify-CAS one block with retries; ``change`` returns None to delete it."""
        key = block_key(self.prefix, cidr)
        for attempt in range(_RETRIES):
            kv = self.store.get(key)
            if kv is None:
                with self._lock:
                    self._blocks.pop(cidr, None)
                raise _Gone(cidr)
            new = change(Block.decode(kv.value).copy())
            if new is None:
                ok = self.store.delete(key, mod_revision=kv.mod_revision)
            else:
                ok = self.store.compare_and_swap(key, new.encode(), kv.mod_revision)
            if ok:
                with self._lock:
                    if new is None:
                        self._blocks.pop(cidr, None)
                    else:
                        self._blocks[cidr] = new
                return new
            self.conflicts += 1
            time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise IPAMError(f"block {cidr}: lost {_RETRIES} compare-and-swap races in a row",
                        fix="the pool is very busy; retry")

    # -- lifecycle --
    def start(self, backend_data: Mapping[str, Any]) -> tuple[IPv4Network, ...]:
        node = self.ctx.node
        record = {"name": node.name, "public_ip": str(node.public_ip),
                  "backend_type": self.ctx.spec.backend, "backend_data": dict(backend_data)}
        self.store.put(f"{self.prefix}/nodes/{node.name}", json.dumps(record, sort_keys=True))
        self._list()
        with self._lock:
            self._allocs = {}
            for block in self._blocks.values():
                for ordinal, a in block.allocations.items():
                    if a["node"] == self.me:
                        h = Handle.from_key(a["handle"])
                        self._allocs[h] = Allocation(h, block.ip(ordinal), block.cidr)
        if not self._affine():
            self._claim()
        return self.chunks()

    def _affine(self) -> list[IPv4Network]:
        with self._lock:
            return sorted(c for c, b in self._blocks.items() if b.affinity == self.me)

    def _claim(self) -> IPv4Network | None:
        """Claim a free block with affinity to this node; None if the pool has none left."""
        spec = self.ctx.spec
        candidates = list(spec.cidr.subnets(new_prefix=self.block_size))
        start = int(hashlib.sha1(self.me.encode()).hexdigest(), 16) % len(candidates)
        for cidr in candidates[start:] + candidates[:start]:
            with self._lock:
                if cidr in self._blocks:
                    continue
            block = Block(cidr, self.me)
            if self.store.create(block_key(self.prefix, cidr), block.encode()):
                with self._lock:
                    self._blocks[cidr] = block
                self.ctx.log.info("claimed block %s", cidr)
                return cidr
            self.conflicts += 1
            self._list()  # someone took it: refresh our view
        return self._reclaim_invalid(candidates)

    def subscribe(self, on_peers: PeersCallback, on_chunks: ChunksCallback | None = None) -> None:
        """Peers from a list+watch of the prefix (PrefixMirror: after a compaction it
        re-lists, retrying with backoff while etcd is unreachable, and reports the
        difference). Waits briefly for the first list so the current peers come first."""
        self._on_peers, self._on_chunks = on_peers, on_chunks
        mirror = self._mirror = PrefixMirror(self.store, self.prefix + "/",
                                             self._on_events).start()
        if not mirror.wait_synced(5.0):
            self.ctx.log.warning("blocks: etcd did not answer the first list; retrying")
            return
        with mirror.lock, self._lock:  # records deleted since start()'s own list are gone
            listed = set(mirror.items())
            self._blocks = {c: b for c, b in self._blocks.items()
                            if block_key(self.prefix, c) in listed}
            self._nodes = {n: r for n, r in self._nodes.items()
                           if f"{self.prefix}/nodes/{n}" in listed}
        self._emit_peers()

    def _on_events(self, events: list[WatchEvent]) -> None:
        with self._lock:
            for ev in events:
                self._ingest(ev.kv.key, ev.kv.value if ev.kind == "put" else "",
                             self._blocks, self._nodes)
        self._repair()
        self._emit_peers()

    def _peer_view(self) -> dict[str, Peer]:
        out: dict[str, Peer] = {}
        with self._lock:
            for name, rec in self._nodes.items():
                if name == self.me:
                    continue
                subnets = sorted(c for c, b in self._blocks.items() if b.affinity == name)
                subnets += sorted(
                    IPv4Network(f"{b.ip(o)}/32") for b in self._blocks.values()
                    if b.affinity != name for o, a in b.allocations.items() if a["node"] == name
                )
                out[name] = Peer(name, IPv4Address(rec["public_ip"]), tuple(subnets),
                                 rec.get("backend_type", ""), rec.get("backend_data") or {})
        return out

    def _emit_peers(self) -> None:
        view = self._peer_view()
        with self._lock:
            events = [PeerEvent("removed", p) for n, p in self._peers.items() if n not in view]
            events += [PeerEvent("added", p) for n, p in view.items() if self._peers.get(n) != p]
            self._peers = view
        if events and self._on_peers is not None:
            self._on_peers(events)

    def _chunks_changed(self) -> None:
        if self._on_chunks is not None:
            self._on_chunks(self.chunks())

    # -- node level --
    def chunks(self) -> tuple[IPv4Network, ...]:
        with self._lock:
            borrowed = sorted(IPv4Network(f"{a.ip}/32") for a in self._allocs.values()
                              if self._blocks.get(a.chunk, Block(a.chunk)).affinity != self.me)
        return tuple(self._affine()) + tuple(borrowed)

    def allocate(self, handle: Handle, requested: IPv4Address | None = None) -> Allocation:
        with self._lock:
            have = self._allocs.get(handle)
        if have is not None and requested not in (None, have.ip):
            raise IPAMError(f"{handle.key()} already holds {have.ip}, not the requested "
                            f"{requested}", fix="delete the attachment first (CNI DEL)")
        if have is not None:
            return have
        if requested is not None:  # exactly that address, in one of this node's blocks
            cidr = next((c for c in self._affine() if requested in c), None)
            if cidr is None:
                raise ConfigError(
                    f"requested address {requested} is outside this node's blocks "
                    f"({', '.join(map(str, self._affine())) or 'none yet'})",
                    fix="request an address inside one of them, or none", field="ips")
            ordinal = int(requested) - int(cidr.network_address)

            def claim(block: Block) -> Block:
                held = block.allocations.get(ordinal)
                if held is not None and held["handle"] != handle.key():
                    raise IPAMError(f"requested address {requested} is in use by "
                                    f"{held['handle']} on {held['node']}",
                                    fix="request a free address, or release the other one")
                if block.affinity != self.me:
                    raise _Gone(cidr)
                block.allocations[ordinal] = {"handle": handle.key(), "node": self.me}
                return block

            try:
                self._mutate(cidr, claim)
            except _Gone as exc:
                raise IPAMError(f"block {cidr} changed owner while claiming {requested}",
                                fix="retry") from exc
            alloc = Allocation(handle, requested, cidr)
            with self._lock:
                self._allocs[handle] = alloc
            return alloc
        for cidr in self._affine():
            alloc = self._take(cidr, handle, affine_only=True)
            if alloc is not None:
                return alloc
        while (cidr := self._claim()) is not None:
            alloc = self._take(cidr, handle, affine_only=True)
            if alloc is not None:
                self._chunks_changed()
                return alloc
        if not self.strict:
            self._list()
            with self._lock:
                others = sorted(c for c, b in self._blocks.items()
                                if b.affinity != self.me and len(b.allocations) < c.num_addresses)
            for cidr in others:
                alloc = self._take(cidr, handle, affine_only=False)
                if alloc is not None:
                    self.ctx.log.info("borrowed %s from block %s", alloc.ip, cidr)
                    self._chunks_changed()
                    return alloc
        raise PoolExhausted(
            f"no free address left in {self.ctx.spec.cidr} for node {self.me}"
            + (" (StrictAffinity forbids borrowing)" if self.strict else ""),
            fix="release pods, or give the network a larger CIDR",
        )

    def _take(self, cidr: IPv4Network, handle: Handle, *, affine_only: bool) -> Allocation | None:
        picked: list[int] = []

        def change(block: Block) -> Block:
            picked.clear()
            if affine_only and block.affinity != self.me:
                raise _Gone(cidr)
            ordinal = block.free_ordinal()
            if ordinal is None:
                raise _Full(cidr)
            block.allocations[ordinal] = {"handle": handle.key(), "node": self.me}
            picked.append(ordinal)
            return block

        try:
            block = self._mutate(cidr, change)
        except _Gone:
            return None
        alloc = Allocation(handle, block.ip(picked[0]), cidr)
        with self._lock:
            self._allocs[handle] = alloc
        return alloc

    def release(self, handle: Handle) -> Allocation | None:
        with self._lock:
            alloc = self._allocs.get(handle)
        if alloc is None:
            return None
        ordinal = int(alloc.ip) - int(alloc.chunk.network_address)
        emptied: list[bool] = []

        def change(block: Block) -> Block | None:
            emptied.clear()
            held = block.allocations.get(ordinal)
            if held is not None and held["handle"] == handle.key() and held["node"] == self.me:
                del block.allocations[ordinal]
            if not block.allocations and block.affinity in (self.me, None):
                emptied.append(True)
                return None  # empty: give the block back to the pool
            return block

        with contextlib.suppress(_Gone):
            self._mutate(alloc.chunk, change)
        with self._lock:
            self._allocs.pop(handle, None)
        if emptied or alloc.chunk not in self._affine():
            if emptied:
                self.ctx.log.info("block %s is empty: released", alloc.chunk)
            self._chunks_changed()
        return alloc

    def allocations(self) -> dict[Handle, Allocation]:
        with self._lock:
            return dict(self._allocs)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "block_size": self.block_size,
                "strict_affinity": self.strict,
                "blocks": [str(c) for c in self._affine()],
                "borrowed": [str(c) for c in self.chunks() if c.prefixlen == 32],
                "allocations": len(self._allocs),
                "pool_blocks_claimed": len(self._blocks),
                "nodes": sorted(self._nodes),
                "cas_conflicts": self.conflicts,
                "refused": self.refused.status(),
            }

    def stop(self) -> None:
        if self._mirror is not None:
            self._mirror.stop()
            self._mirror = None

    def teardown(self) -> None:
        self.stop()
        for handle in list(self.allocations()):
            self.release(handle)
        for cidr in self._affine():
            with contextlib.suppress(_Gone):
                self._mutate(cidr, lambda b: None if not b.allocations else attrs.evolve(
                    b, affinity=None))
        self.store.delete(f"{self.prefix}/nodes/{self.me}")


class _Gone(Exception):
    """The block vanished or changed owner under us."""


class _Full(_Gone):
    """The block has no free ordinal."""
