"""weaveDNS records: merge rules, tombstones, the defensive decoder (fuzzed), resolver config."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.errors import ConfigError
from fabric.mesh.wire import FrameError
from fabric.weave import dns_records
from fabric.weave.dns_conf import cni_dns, nameservers, parse_upstream, render_resolv_conf
from fabric.weave.dns_records import DnsEntries, Entry, check_ip, normalize_name

A, B = 0x020000000001, 0x020000000002


def e(host: str = "web.weave.local.", ip: str = "10.32.0.1", origin: int = A,
      cid: str = "c1", version: int = 1, tomb: int = 0) -> Entry:
    return Entry(host, ip, origin, cid, version, tomb)


# ---- names and addresses ----------------------------------------------------------------
def test_names_are_lowercase_fqdns_in_the_domain() -> None:
    assert normalize_name("Web") == "web.weave.local."
    assert normalize_name("WEB.Weave.Local.") == "web.weave.local."
    assert normalize_name("db", "corp.example") == "db.corp.example."


@pytest.mark.parametrize("bad", ["", ".", "a" * 64 + ".weave.local", "x." * 130 + "weave.local",
                                 "we b", "web..weave.local", "-web", "wé.weave.local"])
def test_bad_names_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        normalize_name(bad)
    assert exc.value.field == "hostname" and exc.value.fix


def test_longest_legal_name_is_accepted() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61]) + "."  # 253 characters (255 wire octets)
    assert len(name) == 254 and normalize_name(name) == name
    with pytest.raises(ConfigError, match="253"):
        normalize_name("c" + name)


@pytest.mark.parametrize("bad", ["::1", "10.0.0.256", "10.0.0", "x"])
def test_only_ipv4_addresses(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_ip(bad)
    assert exc.value.field == "ip"


# ---- merge rules ----------------------------------------------------------------------------
def test_higher_version_wins_and_tombstone_wins_at_equal_version() -> None:
    s = DnsEntries([e(version=2)])
    assert not s.put(e(version=1, tomb=5))  # older tombstone loses
    assert s.put(e(version=2, tomb=5))  # equal version: the tombstone wins
    assert not s.put(e(version=2))  # and stays
    assert s.put(e(version=3))  # a revival at a higher version
    assert list(s)[0].live


def test_merge_delta_returns_only_what_was_new() -> None:
    s = DnsEntries([e(), e(ip="10.32.0.2", version=4)])
    delta = s.merge_delta(DnsEntries([e(), e(ip="10.32.0.2", version=3), e(ip="10.32.0.3")]))
    assert [x.ip for x in delta] == ["10.32.0.3"] and len(s) == 3


def test_add_revives_a_tombstone_one_version_up_and_tombstone_only_touches_own() -> None:
    s = DnsEntries([e(origin=B)])
    first = s.add("web.weave.local.", "10.32.0.1", A, "c1")
    assert first is not None and first.version == 1
    assert s.add("web.weave.local.", "10.32.0.1", A, "c1") is None  # live already
    gone = s.tombstone(A, lambda x: True, now=100)
    assert [(x.origin, x.version, x.tombstone) for x in gone] == [(A, 2, 100)]
    again = s.add("web.weave.local.", "10.32.0.1", A, "c1")
    assert again is not None and (again.version, again.tombstone) == (3, 0)
    assert all(x.live for x in s.of(B))


def test_gc_forgets_old_tombstones_only() -> None:
    s = DnsEntries([e(tomb=100, version=2), e(ip="10.32.0.2"), e(ip="10.32.0.3", tomb=900,
                                                                 version=2)])
    assert s.gc(now=1000, ttl=500) == 1
    assert sorted(x.ip for x in s) == ["10.32.0.2", "10.32.0.3"]


entry_st = st.builds(
    Entry, st.sampled_from(["a.weave.local.", "b.weave.local."]),
    st.sampled_from(["10.0.0.1", "10.0.0.2"]), st.sampled_from([A, B]),
    st.sampled_from(["", "c1"]), st.integers(1, 4),
    st.sampled_from([0, 0, 10, 20]))


@settings(max_examples=200, deadline=None)
@given(st.lists(entry_st, max_size=12), st.lists(entry_st, max_size=12),
       st.lists(entry_st, max_size=12))
def test_merge_is_a_semilattice(x: list[Entry], y: list[Entry], z: list[Entry]) -> None:
    def m(*parts: list[Entry]) -> bytes:
        s = DnsEntries()
        for p in parts:
            s.merge(DnsEntries(p))
        return s.encode()
    assert m(x, y) == m(y, x)
    assert m(x, y, z) == m(z, y, x)
    assert m(x, x) == m(x)


# ---- wire ------------------------------------------------------------------------------------
def test_encode_decode_round_trip_and_is_deterministic() -> None:
    s = DnsEntries([e(ip="10.32.0.2"), e(origin=B, tomb=7, version=3)])
    again = DnsEntries.decode(s.encode())
    assert again.encode() == s.encode()
    assert DnsEntries(reversed(list(s))).encode() == s.encode()


def _payload(*rows: list) -> bytes:
    return json.dumps({"e": list(rows)}).encode()


OK_ROW = ["web.weave.local.", "10.32.0.1", A, "c1", 1, 0]


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"[]", b'{"e": 5}', b"[" * 100000,
    _payload(OK_ROW[:5]),
    _payload(["Web.weave.local.", *OK_ROW[1:]]),  # not lowercase
    _payload(["web.weave.local", *OK_ROW[1:]]),  # not an FQDN
    _payload(["a" * 64 + ".weave.local.", *OK_ROW[1:]]),  # label > 63
    _payload([("a" * 60 + ".") * 5, *OK_ROW[1:]]),  # name > 253
    _payload([OK_ROW[0], "fe80::1", *OK_ROW[2:]]),  # IPv6
    _payload([OK_ROW[0], "010.32.0.1", *OK_ROW[2:]]),  # not canonical
    _payload([*OK_ROW[:2], 0, *OK_ROW[3:]]),  # origin 0
    _payload([*OK_ROW[:2], 1 << 48, *OK_ROW[3:]]),  # origin too large
    _payload([*OK_ROW[:2], True, *OK_ROW[3:]]),  # a bool is not a peer name
    _payload([*OK_ROW[:3], "x" * 129, 1, 0]),  # container id too long
    _payload([*OK_ROW[:3], "c\n", 1, 0]),  # not printable
    _payload([*OK_ROW[:4], 0, 0]),  # version 0
    _payload([*OK_ROW[:4], 1.5, 0]),
    _payload([*OK_ROW[:5], -1]),
])
def test_decoder_refuses_bad_payloads(payload: bytes) -> None:
    with pytest.raises(FrameError) as exc:
        DnsEntries.decode(payload)
    assert exc.value.reason == "bad-dns"


def test_decoder_refuses_too_many_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns_records, "MAX_ENTRIES", 3)
    rows = [[f"h{i}.weave.local.", *OK_ROW[1:]] for i in range(4)]
    with pytest.raises(FrameError, match="more than 3"):
        DnsEntries.decode(_payload(*rows))
    assert len(DnsEntries.decode(_payload(*rows[:3]))) == 3


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_fuzz_bytes(data: bytes) -> None:
    with contextlib.suppress(FrameError):  # anything else fails the test
        DnsEntries.decode(data)


json_st = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 1 << 49) | st.text(max_size=70),
    lambda kids: st.lists(kids, max_size=7), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(json_st, st.tuples(
    st.text(max_size=300), st.text(max_size=20), json_st, json_st, json_st, json_st).map(list)),
    max_size=5))
def test_decoder_fuzz_structured(rows: list) -> None:
    try:
        out = DnsEntries.decode(_payload(*rows))
    except FrameError:
        return
    for x in out:  # whatever is accepted is well-formed
        assert normalize_name(x.hostname) == x.hostname and check_ip(x.ip) == x.ip


# ---- resolver configuration -------------------------------------------------------------------
def test_upstream_parsing() -> None:
    assert parse_upstream("10.0.0.1") == ("10.0.0.1", 53)
    assert parse_upstream("10.0.0.1:5300") == ("10.0.0.1", 5300)
    assert parse_upstream("[fd00::1]:5300") == ("fd00::1", 5300)
    assert parse_upstream("fd00::1") == ("fd00::1", 53)
    for bad in ("x", "10.0.0.1:0", "10.0.0.1:x", "[fd00::1]:99999"):
        with pytest.raises(ConfigError) as exc:
            parse_upstream(bad)
        assert exc.value.field == "upstream"


def test_nameservers_from_resolv_conf() -> None:
    text = ("# comment\nnameserver 10.0.0.2\nnameserver bogus\nsearch x\n"
            "nameserver fe80::1%eth0\nnameserver\n")
    assert nameservers(text) == ["10.0.0.2", "fe80::1"]


def test_cni_dns_and_pod_resolv_conf() -> None:
    d = cni_dns("10.32.0.1")
    assert d == {"nameservers": ["10.32.0.1"], "domain": "weave.local",
                 "search": ["weave.local"], "options": ["ndots:1"]}
    assert render_resolv_conf(d) == ("nameserver 10.32.0.1\nsearch weave.local\n"
                                     "options ndots:1\n")
    assert render_resolv_conf({"nameservers": ["10.0.0.1"], "domain": "corp."}) == (
        "nameserver 10.0.0.1\ndomain corp\n")
    for bad in ({}, {"nameservers": ["nope"]}):
        with pytest.raises(ConfigError) as exc:
            render_resolv_conf(bad)
        assert exc.value.field == "dns.nameservers"


def test_public_surface() -> None:
    from fabric.weave import dns, dns_conf, dns_records, dns_server, dns_state
    for mod in (dns, dns_conf, dns_records, dns_server, dns_state):
        assert mod.__all__ and all(hasattr(mod, name) for name in mod.__all__)
