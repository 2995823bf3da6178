"""Weave peer info gossip: untrusted records validated, versions merged, our own outbid."""

from __future__ import annotations

import contextlib
import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.mesh.wire import FrameError
from fabric.weave.peerinfo import PeerInfo, PeerInfoGossiper, PeerInfoSet

POD = IPv4Network("10.32.0.0/12")
ME, OTHER = 0x020000000001, 0x020000000002


def _rec(**kw):
    base = {"v": 5, "ip": "198.18.0.12", "dp": 6783, "fp": 6784, "key": "ab" * 32,
            "vtep": "02:aa:bb:cc:dd:ee"}
    base.update(kw)
    return base


def _payload(records: dict[int, dict]) -> bytes:
    return json.dumps({f"{n:012x}": r for n, r in records.items()}).encode()


def test_valid_record_is_merged_and_relayed() -> None:
    g = PeerInfoGossiper(ME, POD)
    delta = g.on_gossip(OTHER, _payload({OTHER: _rec()}))
    assert delta is not None and OTHER in delta.records
    info = g.get(OTHER)
    assert info.ip == IPv4Address("198.18.0.12") and info.fastdp_port == 6784
    assert g.on_gossip(OTHER, _payload({OTHER: _rec()})) is None  # nothing new
    assert g.on_gossip(OTHER, _payload({OTHER: _rec(v=4, dp=1)})) is None  # older loses
    g.on_gossip(OTHER, _payload({OTHER: _rec(v=6, dp=7000)}))
    assert g.get(OTHER).data_port == 7000


@pytest.mark.parametrize("bad", [
    {"ip": "10.32.0.5"},  # inside the pod network
    {"ip": "224.0.0.1"}, {"ip": "127.0.0.1"}, {"ip": "0.0.0.0"}, {"ip": "169.254.1.1"},
    {"ip": "255.255.255.255"}, {"ip": "not-an-ip"},
    {"dp": 0}, {"dp": 70000}, {"fp": -1}, {"key": "abcd"}, {"key": "zz"},
    {"vtep": "ff:ff:ff:ff:ff:ff"}, {"vtep": "01:00:5e:00:00:01"}, {"vtep": "nope"},
    {"v": -1}, {"v": "1"},
])
def test_bad_records_are_refused_and_counted(bad) -> None:
    g = PeerInfoGossiper(ME, POD)
    assert g.on_gossip(OTHER, _payload({OTHER: _rec(**bad)})) is None
    assert g.get(OTHER) is None and sum(g.rejected.values()) == 1


def test_garbage_payload_raises_the_mesh_decode_error() -> None:
    g = PeerInfoGossiper(ME, POD)
    for payload in (b"{not json", b"[1,2]", b"x" * (2 << 20)):
        with pytest.raises(FrameError):
            g.on_gossip(OTHER, payload)


def test_an_older_incarnation_of_us_is_outbid() -> None:
    g = PeerInfoGossiper(ME, POD)
    mine = PeerInfo(ME, 10, IPv4Address("198.18.0.11"), 6783)
    g.publish(mine)
    delta = g.on_gossip(OTHER, _payload({ME: _rec(v=50, ip="198.18.0.99")}))
    assert g.get(ME).ip == IPv4Address("198.18.0.11") and g.get(ME).version == 51
    assert delta is not None and delta.records[ME].version == 51


def test_encode_merge_roundtrip() -> None:
    g = PeerInfoGossiper(ME, POD)
    g.publish(PeerInfo(ME, 3, IPv4Address("198.18.0.11"), 6783, 6784, b"\x01" * 32,
                       "02:00:00:00:00:09"))
    other = PeerInfoGossiper(OTHER, POD)
    other.on_gossip(ME, g.gossip().encode())
    assert other.get(ME) == g.get(ME)
    merged = PeerInfoSet().merge(g.gossip())
    assert merged.records[ME].vtep_mac == "02:00:00:00:00:09"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.dictionaries(
    st.text(max_size=14), st.dictionaries(st.text(max_size=4), st.none() | st.integers()
                                          | st.text(max_size=20)), max_size=4
).map(lambda d: json.dumps(d).encode()))
def test_decoder_never_crashes(payload: bytes) -> None:
    g = PeerInfoGossiper(ME, POD)
    with contextlib.suppress(FrameError):
        g.on_gossip(OTHER, payload)
    for info in g.state.records.values():
        assert info.ip not in POD and 0 < info.data_port <= 65535


def test_a_record_claiming_our_own_address_is_refused() -> None:
    g = PeerInfoGossiper(ME, POD, IPv4Address("198.18.0.11"))
    assert g.on_gossip(OTHER, _payload({OTHER: _rec(ip="198.18.0.11")})) is None
    assert g.get(OTHER) is None and "own underlay address" in " ".join(g.rejected)
    assert g.on_gossip(OTHER, _payload({OTHER: _rec(ip="198.18.0.12")})) is not None
