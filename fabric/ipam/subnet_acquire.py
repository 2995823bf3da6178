"""Acquiring a ``subnet`` lease in etcd (a mixin of
:class:`fabric.ipam.subnet.SubnetLeaseIPAM`): re-use this node's lease, re-assert it over
garbage, take a free subnet, or as a last resort reclaim one held by an invalid record
without a TTL (so garbage never blocks a subnet forever)."""

from __future__ import annotations

import itertools
import logging
import random
from ipaddress import IPv4Network
from typing import Any

from fabric.errors import IPAMError, PoolExhausted
from fabric.ipam.netconfig import LeaseRecord, NetConfig, parse_leases, subnet_key
from fabric.store.base import KeyValue, StoreLease

__all__ = ["LeaseAcquirer"]

log = logging.getLogger("fabric.ipam.subnet")

_ATTEMPTS = 10


class LeaseAcquirer:
    """Needs the IPAM's store, config, prefix, public_ip, check, lease TTL and ``_took``."""

    store: Any
    config: NetConfig | None
    prefix: str
    public_ip: Any
    lease_ttl: int
    check: Any
    _lease: StoreLease | None

    def _record(self) -> LeaseRecord:
        raise NotImplementedError

    def _took(self, subnet: IPv4Network, lease: StoreLease, reused: bool) -> IPv4Network:
        raise NotImplementedError

    def _valid(self, subnet: IPv4Network, rec: LeaseRecord | None) -> bool:
        return self.check.problem(subnet, rec) is None

    def _reassert(self, subnet: IPv4Network, kv: KeyValue, why: str) -> IPv4Network | None:
        """Write our record back over an invalid value on the subnet our pods use."""
        lease = self.store.lease(self.lease_ttl, lease_id=self._lease.id if self._lease else None)
        if not self.store.compare_and_swap(kv.key, self._record().to_json(), kv.mod_revision,
                                           lease):
            return None
        log.warning("lease %s held an invalid record (%s); re-asserted this node's lease: its "
                    "pods keep their addresses and gateway", subnet, why)
        return self._took(subnet, lease, reused=True)

    def _acquire(self, preferred: IPv4Network | None) -> IPv4Network:
        assert self.config is not None
        prefix = f"{self.prefix}/subnets/"
        for _ in range(_ATTEMPTS):
            kvs, _rev = self.store.get_prefix(prefix)
            leases = parse_leases(kvs)
            if preferred in leases and self.config.contains(preferred) and not self._valid(
                preferred, leases[preferred][1]
            ):  # garbage over the lease our pods use: write ours back, never move
                kv, rec = leases[preferred]
                if self._reassert(preferred, kv, self.check.problem(preferred, rec) or "?"):
                    return preferred
                continue  # changed under us: look again
            mine = [
                s
                for s, (_kv, rec) in leases.items()
                if rec is not None and rec.public_ip == self.public_ip and self._valid(s, rec)
            ]
            if mine:
                subnet = preferred if preferred in mine else sorted(mine)[0]
                kv, rec = leases[subnet]
                lease = self.store.lease(self.lease_ttl, lease_id=kv.lease or None)
                if (
                    rec != self._record() or kv.lease != lease.id
                ) and not self.store.compare_and_swap(
                    kv.key, self._record().to_json(), kv.mod_revision, lease
                ):
                    continue  # changed under us: look again
                for stale in mine:  # older leases of this node (e.g. before a config change)
                    if stale != subnet:
                        self.store.delete(leases[stale][0].key, leases[stale][0].mod_revision)
                return self._took(subnet, lease, reused=True)
            free = list(
                itertools.islice((s for s in self.config.subnets() if s not in leases), 100)
            )
            if not free and (taken := self._reclaim(leases)) is not None:
                return taken
            if not free:
                raise PoolExhausted(
                    f"network {self.config.network}: all {len(leases)} subnets are leased",
                    fix="free leases of dead nodes, widen SubnetMin/SubnetMax or shorten SubnetLen",
                )
            if (
                preferred is not None
                and self.config.contains(preferred)
                and preferred not in leases
            ):
                subnet = preferred  # our previous subnet is still free: take it back
            else:
                subnet = random.choice(free)  # spread nodes like flannel (first 100 free)
            lease = self.store.lease(self.lease_ttl)
            if self.store.create(subnet_key(self.prefix, subnet), self._record().to_json(), lease):
                return self._took(subnet, lease, reused=False)
            lease.revoke()  # lost the race for that subnet
        raise IPAMError(
            f"could not lease a subnet of {self.config.network} after {_ATTEMPTS} tries",
            fix="too much contention; retry",
        )

    def _reclaim(self, leases: dict) -> IPv4Network | None:
        """The pool is full: take a subnet whose key holds an invalid record without an etcd
        lease (it would never expire), so garbage cannot block a subnet forever."""
        assert self.config is not None
        for subnet, (kv, rec) in sorted(leases.items()):
            if kv.lease or not self.config.contains(subnet) or self._valid(subnet, rec):
                continue
            lease = self.store.lease(self.lease_ttl)
            if self.store.compare_and_swap(kv.key, self._record().to_json(), kv.mod_revision,
                                           lease):
                log.warning("reclaimed subnet %s: its key held an invalid record without a TTL "
                            "(%s)", subnet, self.check.problem(subnet, rec))
                return self._took(subnet, lease, reused=False)
            lease.revoke()
        return None

