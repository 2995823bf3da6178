"""Lease values read from etcd: peers are derived; malformed values are logged, never fatal."""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address, IPv4Network

from fabric.api import Peer
from fabric.ipam.netconfig import parse_leases, peers_from_leases
from fabric.store.base import KeyValue

ME = IPv4Address("198.18.0.11")
P = "/netfabric/t/subnets/"


def lease(subnet: str, ip: str, rev: int = 5, **data) -> KeyValue:
    value = json.dumps({"PublicIP": ip, "BackendType": "vxlan", "BackendData": data})
    return KeyValue(P + subnet, value, rev)


def test_peers_exclude_self_and_carry_backend_data() -> None:
    kvs = [lease("10.5.1.0-24", "198.18.0.11"), lease("10.5.2.0-24", "198.18.0.12", VNI=1)]
    peers = peers_from_leases(kvs, ME, {})
    assert list(peers) == [IPv4Network("10.5.2.0/24")]
    peer = peers[IPv4Network("10.5.2.0/24")]
    assert peer == Peer("198.18.0.12", IPv4Address("198.18.0.12"),
                        (IPv4Network("10.5.2.0/24"),), "vxlan", {"VNI": 1})  # fmt: skip


def test_malformed_values_are_logged_once_and_skipped(caplog) -> None:
    caplog.set_level(logging.ERROR)
    kvs = [
        KeyValue(P + "10.5.3.0-24", "{not json", 7),
        KeyValue(P + "10.5.4.0-24", '{"PublicIP": "banana"}', 8),
        KeyValue(P + "10.5.5.0-24", "[]", 9),
        KeyValue(P + "not-a-subnet", "{}", 10),
        KeyValue(P + "10.5.6.7-24", "{}", 11),  # host bits set: not a lease key
        lease("10.5.2.0-24", "198.18.0.12"),
    ]
    warned: set = set()
    peers = peers_from_leases(kvs, ME, {}, warned)
    assert list(peers) == [IPv4Network("10.5.2.0/24")]
    assert caplog.text.count("malformed") == 3
    caplog.clear()
    peers_from_leases(kvs, ME, peers, warned)  # the same bad revisions: not logged again
    assert "malformed" not in caplog.text
    leases = parse_leases(kvs)
    assert leases[IPv4Network("10.5.3.0/24")][1] is None  # known, and counted as taken
    assert IPv4Network("10.5.6.0/24") not in leases


def test_a_peer_whose_value_breaks_is_kept() -> None:
    good = peers_from_leases([lease("10.5.2.0-24", "198.18.0.12")], ME, {})
    broken = [KeyValue(P + "10.5.2.0-24", "{oops", 9)]
    assert peers_from_leases(broken, ME, good) == good
    assert peers_from_leases([], ME, good) == {}  # deleted: gone
