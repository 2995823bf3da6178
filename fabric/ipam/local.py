"""``LocalAllocator``: one address per workload handle inside this node's chunks.

Used by the subnet IPAM and usable by any other. Guarantees:

* idempotent per handle: allocating twice returns the same address;
* never hands out a chunk's network, broadcast or gateway (first host: the bridge) address;
* round-robin: the search starts after the last address handed out, so a
  released address is not reused at once;
* a requested (static) address is handed out exactly, or refused with a reason;
* crash-safe: the state file is written (temp file + fsync + rename + directory
  fsync) before ``allocate``/``release`` return, so after ``kill -9`` a restarted
  agent reloads every allocation and never hands out an address twice;
* thread-safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from fabric.api import Allocation, Handle
from fabric.errors import ConfigError, IPAMError, PoolExhausted
from fabric.fsutil import atomic_write

__all__ = ["LocalAllocator", "gateway_of", "usable_hosts"]

log = logging.getLogger("fabric.ipam.local")

_VERSION = 1


def gateway_of(chunk: IPv4Network) -> IPv4Address:
    """The chunk's first host: the bridge / gateway address."""
    return chunk.network_address + 1


def usable_hosts(chunk: IPv4Network) -> int:
    """Addresses workloads can get in ``chunk`` (hosts minus the gateway)."""
    return max(0, chunk.num_addresses - 3)


class LocalAllocator:
    """``LocalAllocator(state_dir / "allocations.json", chunks)``."""

    def __init__(self, path: Path, chunks: Iterable[IPv4Network] = ()) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._chunks: tuple[IPv4Network, ...] = tuple(chunks)
        self._allocs: dict[Handle, Allocation] = {}
        self._last: IPv4Address | None = None  # the round-robin cursor
        self._load()

    # -- persistence --
    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise IPAMError(f"cannot read allocations from {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
            allocs = {}
            for key, rec in data.get("allocations", {}).items():
                handle = Handle.from_key(key)
                allocs[handle] = Allocation(
                    handle, IPv4Address(rec["ip"]), IPv4Network(rec["chunk"])
                )
            last = IPv4Address(data["last"]) if data.get("last") else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IPAMError(
                f"allocation state {self.path} is corrupt: {exc}",
                fix="inspect it; move it aside only if no workload on this node uses its addresses",
            ) from exc
        self._allocs, self._last = allocs, last

    def _save(self) -> None:
        data: dict[str, Any] = {
            "version": _VERSION,
            "last": str(self._last) if self._last else None,
            "allocations": {
                h.key(): {"ip": str(a.ip), "chunk": str(a.chunk)}
                for h, a in sorted(self._allocs.items(), key=lambda item: int(item[1].ip))
            },
        }
        try:
            atomic_write(self.path, json.dumps(data, indent=1) + "\n", mode=0o600)
        except OSError as exc:
            raise IPAMError(f"cannot persist allocations to {self.path}: {exc}") from exc

    # -- chunks --
    @property
    def chunks(self) -> tuple[IPv4Network, ...]:
        return self._chunks

    def set_chunks(self, chunks: Iterable[IPv4Network]) -> None:
        """The chunks new addresses come from. Existing allocations are kept."""
        with self._lock:
            self._chunks = tuple(chunks)

    # -- allocation --
    def _candidates(self) -> Iterator[tuple[IPv4Address, IPv4Network]]:
        """Every allocatable address once, starting right after the cursor."""
        order = [(c, int(gateway_of(c)) + 1, int(c.broadcast_address) - 1) for c in self._chunks]
        start_chunk, start_at = 0, None
        if self._last is not None:
            for i, (chunk, lo, _hi) in enumerate(order):
                if self._last in chunk:
                    start_chunk, start_at = i, max(lo, int(self._last) + 1)
                    break
        n = len(order)
        for step in range(n + 1):
            chunk, lo, hi = order[(start_chunk + step) % n]
            if step == 0 and start_at is not None:
                first, last = start_at, hi
            elif step == n:  # wrap: the part of the first chunk before the cursor
                if start_at is None:
                    return
                first, last = lo, start_at - 1
            else:
                first, last = lo, hi
            for addr in range(first, last + 1):
                yield IPv4Address(addr), chunk

    def allocate(self, handle: Handle, requested: IPv4Address | None = None) -> Allocation:
        """The handle's address; ``requested``: exactly that one or an error (fabric.api)."""
        with self._lock:
            existing = self._allocs.get(handle)
            if existing is not None:
                if requested is not None and existing.ip != requested:
                    raise IPAMError(
                        f"{handle.key()} already holds {existing.ip}, not the requested "
                        f"{requested}", fix="delete the attachment first (CNI DEL)")
                return existing
            if not self._chunks:
                raise IPAMError("this node owns no address chunk yet", fix="wait for the lease")
            if requested is not None:
                found = self._requested(requested)
            else:
                used = {a.ip for a in self._allocs.values()}
                found = next(((ip, c) for ip, c in self._candidates() if ip not in used), None)
            if found is None:
                raise PoolExhausted(
                    f"no free address left in {', '.join(map(str, self._chunks))}",
                    fix="release unused workloads or use a shorter SubnetLen",
                )
            ip, chunk = found
            alloc = Allocation(handle, ip, chunk)
            self._allocs[handle] = alloc
            prev_last, self._last = self._last, (ip if requested is None else self._last)
            try:
                self._save()
            except IPAMError:
                del self._allocs[handle]
                self._last = prev_last
                raise
            return alloc

    def _requested(self, ip: IPv4Address) -> tuple[IPv4Address, IPv4Network]:
        """(ip, its chunk) if ``ip`` is allocatable and free; else the error (lock held)."""
        chunk = next((c for c in self._chunks if ip in c), None)
        if chunk is None:
            raise ConfigError(
                f"requested address {ip} is outside this node's chunks "
                f"({', '.join(map(str, self._chunks))})",
                fix="request an address inside one of them, or none", field="ips")
        if ip in (chunk.network_address, gateway_of(chunk), chunk.broadcast_address):
            raise ConfigError(
                f"requested address {ip} is the network, gateway or broadcast address of "
                f"{chunk}", fix="request a host address other than the gateway", field="ips")
        holder = next((h for h, a in self._allocs.items() if a.ip == ip), None)
        if holder is not None:
            raise IPAMError(f"requested address {ip} is in use by {holder.key()}",
                            fix="request a free address, or release the other attachment")
        return ip, chunk

    def release(self, handle: Handle) -> Allocation | None:
        with self._lock:
            alloc = self._allocs.pop(handle, None)
            if alloc is None:
                return None
            try:
                self._save()
            except IPAMError:
                self._allocs[handle] = alloc
                raise
            return alloc

    def get(self, handle: Handle) -> Allocation | None:
        with self._lock:
            return self._allocs.get(handle)

    def allocations(self) -> dict[Handle, Allocation]:
        with self._lock:
            return dict(self._allocs)

    def outside_chunks(self) -> list[Allocation]:
        """Allocations whose address is not in a current chunk (the lease moved)."""
        with self._lock:
            return [a for a in self._allocs.values() if not any(a.ip in c for c in self._chunks)]

    def clear(self) -> None:
        """Forget every allocation and delete the state file."""
        with self._lock:
            self._allocs.clear()
            self._last = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
