"""Lease records are untrusted: which ones the ``subnet`` IPAM may turn into peers.

Anyone who can write to etcd can write a lease key, so every record is checked against
this node's configured network (trusted, local) and the network config in etcd before it
becomes a :class:`~fabric.api.Peer`: the subnet inside the network, of its SubnetLen and
within SubnetMin..SubnetMax, a unicast PublicIP outside the pod network, well-formed
BackendData. Refused records are reported once per key and content
(:class:`~fabric.net.validate.Refusals`).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network

from fabric.api import Peer
from fabric.errors import ConfigError
from fabric.ipam.netconfig import LeaseRecord, NetConfig, parse_subnet_key
from fabric.net.validate import Refusals, peer_problem
from fabric.store.base import KeyValue

__all__ = ["LeaseCheck"]


class LeaseCheck:
    def __init__(self, network: IPv4Network, public_ip: IPv4Address, refused: Refusals) -> None:
        self.network = network  # the agent's own configuration: the trusted bound
        self.public_ip = public_ip
        self.refused = refused
        self.config: NetConfig | None = None

    def set_config(self, config: NetConfig) -> None:
        """Accept etcd's network config only inside the locally configured network (a
        forged ``Network: 0.0.0.0/0`` would otherwise validate any lease)."""
        if not config.network.subnet_of(self.network):
            raise ConfigError(
                f"the network config in etcd says Network {config.network}, outside this "
                f"node's network {self.network}; refusing to use it",
                fix="correct <prefix>/config in etcd or the agent's --network",
            )
        self.config = config

    def problem(self, subnet: IPv4Network, rec: LeaseRecord | None) -> str | None:
        """Why a lease record may not be used (None: it may)."""
        if self.config is None:
            return "the network config is not known yet"
        if rec is None:
            return "the value is not a lease record (malformed JSON or fields)"
        own = None if rec.public_ip == self.public_ip else self.public_ip
        if why := peer_problem((subnet,), rec.public_ip, rec.backend_data, self.network,
                               self.config.subnet_len, own):
            return why
        if not self.config.contains(subnet):
            return f"subnet {subnet} is outside SubnetMin..SubnetMax of {self.config.network}"
        return None

    def peers(self, items: Mapping[str, KeyValue], own: IPv4Network | None,
              previous: Mapping[IPv4Network, Peer]) -> dict[IPv4Network, Peer]:
        """Valid leases of other nodes by subnet. An invalid record is refused; if it
        replaced a valid lease, that peer stays as it was (as flannel skips such an
        event), so a garbage write neither adds nor removes a route."""
        if self.config is None:
            return dict(previous)
        peers: dict[IPv4Network, Peer] = {}
        for key, kv in items.items():
            subnet = parse_subnet_key(key)
            if subnet is None:
                self.refused.refuse(key, "the key does not name a subnet (a.b.c.d-len)", kv.value)
                continue
            try:
                rec: LeaseRecord | None = LeaseRecord.parse(kv.value)
            except (ValueError, KeyError, TypeError) as exc:
                rec, why = None, f"malformed value: {exc}"
            else:
                why = self.problem(subnet, rec)
            if why is not None or rec is None:
                self.refused.refuse(key, why or "invalid", kv.value)
                if subnet in previous:
                    peers[subnet] = previous[subnet]
                continue
            self.refused.accept(key)
            if rec.public_ip == self.public_ip:
                continue  # ours (an old one is deleted by the keeper)
            if subnet == own:
                continue  # another node claims our subnet: never a route over our bridge
            peers[subnet] = Peer(str(rec.public_ip), rec.public_ip, (subnet,), rec.backend_type,
                                 rec.backend_data)
        self.refused.keep_only(set(items))
        return peers
