"""``subnet`` IPAM: flannel's subnet leases in etcd, plus a node-local address allocator.

etcd layout under the network's prefix (flannel's, so flannel tools can read it)::

    <prefix>/config                    {"Network": ..., "SubnetLen": ..., "Backend": {...}}
    <prefix>/subnets/10.5.7.0-24       {"PublicIP": "198.18.0.11", "BackendType": "vxlan",
                                        "BackendData": {...}}   (attached to an etcd lease)

A node owns the lease whose ``PublicIP`` is its own; after a restart it re-uses
that lease (or the subnet recorded in ``state_dir/lease.json``). A keeper thread
refreshes the etcd lease before it expires and re-acquires it if it vanished; a
:class:`~fabric.store.sync.PrefixMirror` on ``subnets/`` turns other nodes'
leases into peer events. While etcd is unreachable the node keeps its subnet
and keeps allocating addresses from it.

``ipam_config``: ``leaseTTL`` (seconds or "24h"/"90m"/"30s"; default 24h, as flannel).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

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
from fabric.errors import (
    ConfigError,
    FabricError,
    IPAMError,
    StoreError,
    StoreUnavailable,
)
from fabric.fsutil import atomic_write
from fabric.ipam.flannel_names import flannel_type
from fabric.ipam.local import LocalAllocator
from fabric.ipam.netconfig import (
    LeaseRecord,
    NetConfig,
    ensure_netconfig,
    lease_owner,
    parse_duration,
    subnet_key,
)
from fabric.ipam.subnet_acquire import LeaseAcquirer
from fabric.ipam.subnet_check import LeaseCheck
from fabric.ipam.subnet_env import read_subnet_env, subnet_from_env
from fabric.net.validate import Refusals
from fabric.store.base import Store, StoreLease, WatchEvent
from fabric.store.sync import PrefixMirror

__all__ = ["SubnetLeaseIPAM", "DEFAULT_LEASE_TTL"]

log = logging.getLogger("fabric.ipam.subnet")

DEFAULT_LEASE_TTL = 24 * 3600


class SubnetLeaseIPAM(LeaseAcquirer, IPAM):
    name = "subnet"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        cfg = dict(ctx.spec.ipam_config)
        unknown = sorted(set(cfg) - {"leaseTTL"})
        if unknown:
            raise ConfigError(
                f"ipamConfig.{unknown[0]} is not a subnet IPAM option", fix="use leaseTTL"
            )
        self.lease_ttl = parse_duration(cfg.get("leaseTTL", DEFAULT_LEASE_TTL), "leaseTTL")
        self.renew_interval = max(0.5, min(self.lease_ttl / 3, 3600.0))
        self.prefix = ctx.spec.prefix
        self.public_ip = ctx.node.public_ip
        self.allocator = LocalAllocator(ctx.state_dir / "allocations.json")
        self.config: NetConfig | None = None
        self._record_path = ctx.state_dir / "lease.json"
        self._data: dict[str, Any] = {}
        self._subnet: IPv4Network | None = None
        self._lease: StoreLease | None = None
        self._expires = 0.0
        self._confirmed = False  # the lease was acquired/verified in etcd since start
        self._store_error: str | None = None
        self._peers: dict[IPv4Network, Peer] = {}
        self.check = LeaseCheck(ctx.spec.cidr, self.public_ip, Refusals(log, "lease"))
        self._on_peers: PeersCallback | None = None
        self._on_chunks: ChunksCallback | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._keeper: threading.Thread | None = None
        self._mirror: PrefixMirror | None = None

    # -- helpers --
    @property
    def store(self) -> Store:
        if self.ctx.store is None:
            raise ConfigError(
                f"network {self.ctx.spec.name}: the subnet IPAM needs etcd",
                fix="set the agent's etcd URL (--etcd / etcd:) or pick another IPAM",
            )
        return self.ctx.store

    def _record(self) -> LeaseRecord:
        return LeaseRecord(self.public_ip, flannel_type(self.ctx.spec.backend), self._data)

    def _load_local_record(self) -> tuple[IPv4Network | None, int]:
        try:
            data = json.loads(self._record_path.read_text())
            return IPv4Network(data["subnet"]), int(data.get("lease_id", 0))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring malformed lease record %s: %s", self._record_path, exc)
        return subnet_from_env(read_subnet_env(self.ctx.state_dir / "subnet.env")), 0

    def _save_local_record(self) -> None:
        lease_id = self._lease.id if self._lease else 0
        data = {"subnet": str(self._subnet), "public_ip": str(self.public_ip), "lease_id": lease_id}
        try:
            atomic_write(self._record_path, json.dumps(data) + "\n")
        except OSError as exc:
            raise IPAMError(f"cannot record the lease in {self._record_path}: {exc}") from exc

    # -- validating records (other nodes', or anyone's, writes) --
    def _load_config(self) -> NetConfig:
        config = ensure_netconfig(self.store, self.prefix, self.ctx.spec)
        self.check.set_config(config)  # raises ConfigError if it leaves the local network
        return config

    def _took(self, subnet: IPv4Network, lease: StoreLease, reused: bool) -> IPv4Network:
        with self._lock:
            old = self._subnet
            self._subnet, self._lease = subnet, lease
            self._expires = time.time() + lease.ttl
            self._confirmed = True
            self._store_error = None
            self.allocator.set_chunks((subnet,))
            self._save_local_record()
            on_chunks = self._on_chunks
        log.info(
            "%s lease %s (etcd lease %x, TTL %ss)",
            "re-used" if reused else "acquired",
            subnet,
            lease.id,
            lease.ttl,
        )
        if old is not None and old != subnet:
            stale = self.allocator.outside_chunks()
            log.warning(
                "lease moved from %s to %s; %d workload(s) keep addresses of the old one",
                old,
                subnet,
                len(stale),
            )
            self._resync_peers()
            if on_chunks is not None:
                on_chunks((subnet,))
        return subnet

    # -- IPAM --
    def start(self, backend_data: Mapping[str, Any]) -> tuple[IPv4Network, ...]:
        self.stop()  # a second start() replaces the threads of the first
        self._data = dict(backend_data)
        self._stop.clear()
        preferred, _ = self._load_local_record()
        try:
            self.config = self._load_config()
            self._acquire(preferred)
        except StoreUnavailable as exc:
            if preferred is None or (self.config and not self.config.contains(preferred)):
                raise
            log.warning(
                "etcd is unreachable (%s); serving the recorded lease %s meanwhile", exc, preferred
            )
            with self._lock:
                self._subnet, self._confirmed, self._store_error = preferred, False, str(exc)
                self.allocator.set_chunks((preferred,))
        self._keeper = threading.Thread(target=self._keep, name=f"lease {self.prefix}", daemon=True)
        self._keeper.start()
        self._mirror = PrefixMirror(self.store, f"{self.prefix}/subnets/", self._on_events).start()
        if self._confirmed:  # etcd answered: have the current peers before subscribe()
            self._mirror.wait_synced(2.0)
        return self.chunks()

    def subscribe(self, on_peers: PeersCallback, on_chunks: ChunksCallback | None = None) -> None:
        with self._lock:
            self._on_peers, self._on_chunks = on_peers, on_chunks
            current = [PeerEvent("added", p) for p in self._peers.values()]
            if current:
                on_peers(current)

    def chunks(self) -> tuple[IPv4Network, ...]:
        with self._lock:
            return (self._subnet,) if self._subnet else ()

    def allocate(self, handle: Handle, requested: IPv4Address | None = None) -> Allocation:
        return self.allocator.allocate(handle, requested)

    def release(self, handle: Handle) -> Allocation | None:
        return self.allocator.release(handle)

    def allocations(self) -> dict[Handle, Allocation]:
        return self.allocator.allocations()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "lease": str(self._subnet) if self._subnet else None,
                "key": subnet_key(self.prefix, self._subnet) if self._subnet else None,
                "lease_id": f"{self._lease.id:x}" if self._lease else None,
                "ttl": self.lease_ttl,
                "expiry": _iso(self._expires) if self._lease else None,
                "expires_in": max(0, round(self._expires - time.time())) if self._lease else None,
                "confirmed": self._confirmed,
                "store_error": self._store_error,
                "peers": [
                    {
                        "name": p.name,
                        "public_ip": str(p.public_ip),
                        "subnets": [str(s) for s in p.subnets],
                        "backend_type": p.backend_type,
                        "state": "leased",
                    }
                    for p in self._peers.values()
                ],
                "allocations": len(self.allocator.allocations()),
                "refused": self.check.refused.status(),
            }

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._mirror is not None:
            self._mirror.stop()
            self._mirror = None
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=10)
        self._keeper = None

    def teardown(self) -> None:
        self.stop()
        subnet, lease = self._subnet, self._lease
        if subnet is None:
            subnet, _ = self._load_local_record()
        if subnet is not None and self.ctx.store is not None:
            try:
                key = subnet_key(self.prefix, subnet)
                kv = self.store.get(key)
                if kv is not None and lease_owner(kv) == self.public_ip:
                    self.store.delete(key, kv.mod_revision)
                if lease is not None:
                    lease.revoke()
                log.info("returned lease %s", subnet)
            except StoreError as exc:
                log.warning("could not return lease %s (%s); it expires by its TTL", subnet, exc)
        self.allocator.clear()
        self._record_path.unlink(missing_ok=True)
        with self._lock:
            self._subnet, self._lease, self._peers = None, None, {}

    # -- keeper thread: refresh, verify, re-acquire --
    def _keep(self) -> None:
        retry = min(max(1.0, self.renew_interval / 10), 5.0)
        delay = self.renew_interval if self._confirmed else retry
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._maintain()
                delay = self.renew_interval
            except StoreUnavailable as exc:
                if self._store_error is None:
                    log.warning("etcd unreachable, keeping lease %s: %s", self._subnet, exc)
                self._store_error = str(exc)
                delay = retry
            except FabricError as exc:  # e.g. a bad config in etcd, an exhausted pool
                log.error("lease %s: %s", self._subnet, exc)
                self._store_error = str(exc)
                delay = retry
            except Exception as exc:  # a bug must not end lease renewal silently
                log.exception("lease %s: unexpected error", self._subnet)
                self._store_error = repr(exc)
                delay = retry

    def _maintain(self) -> None:
        if self.config is None:  # started while etcd was down
            self.config = self._load_config()
        with self._lock:
            subnet, lease, confirmed = self._subnet, self._lease, self._confirmed
        if not confirmed or lease is None or subnet is None:
            self._acquire(subnet)
            return
        try:
            remaining = lease.refresh()
        except StoreUnavailable:
            raise
        except StoreError:
            log.warning("etcd lease of %s expired; re-acquiring", subnet)
            self._acquire(subnet)
            return
        kv = self.store.get(subnet_key(self.prefix, subnet))
        if kv is None or kv.lease != lease.id or kv.value != self._record().to_json():
            log.warning("lease %s was deleted or changed in etcd; re-acquiring", subnet)
            self._acquire(subnet)
            return
        with self._lock:
            self._expires = time.time() + remaining
            if self._store_error:
                log.info("etcd reachable again; lease %s kept", subnet)
            self._store_error = None

    # -- peers --
    def _on_events(self, events: list[WatchEvent]) -> None:
        self._resync_peers()

    def _resync_peers(self) -> None:
        """Recompute peers from the mirror and deliver the difference."""
        mirror = self._mirror
        if mirror is None:
            return
        with mirror.lock, self._lock:
            items = mirror.items()
            peers = self.check.peers(items, self._subnet, self._peers)
            events = [PeerEvent("removed", p) for s, p in self._peers.items() if s not in peers]
            events += [PeerEvent("added", p) for s, p in peers.items() if self._peers.get(s) != p]
            self._peers = peers
            own = items.get(subnet_key(self.prefix, self._subnet)) if self._subnet else None
            if (
                self._subnet is not None
                and self._confirmed
                and (own is None or own.value != self._record().to_json())
            ):
                self._wake.set()  # our lease vanished or was overwritten: the keeper re-asserts
            if events and self._on_peers is not None:
                try:
                    self._on_peers(events)
                except Exception:  # the backend logs its own failures; never kill the watch
                    log.exception("peer callback failed")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
