"""The weaveDNS query handler on wire bytes (no sockets): answers, NXDOMAIN, NODATA, PTR,
truncation, and malformed queries dropped and counted (fuzzed)."""

from __future__ import annotations

import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.weave.dns import WeaveDNS
from fabric.weave.dns_server import TTL, DnsServer
from tests.unit.mesh.helpers import build
from tests.unit.weave_util import SimHost


@pytest.fixture
def server(tmp_path: Path) -> DnsServer:
    net, rs = build(1, edges=[])
    d = WeaveDNS(SimHost(net, rs[0]), tmp_path).start()
    d.add("web", "10.32.0.1", "c1")
    d.add("web", "10.32.0.2", "c2")
    for i in range(100):
        d.add("many", f"10.33.0.{i + 1}", f"m{i}")
    return DnsServer(d, "127.0.0.1", 0, upstream=[])  # not started: handle() only


def ask(srv: DnsServer, name: str, rdtype: str = "A", tcp: bool = False,
        **kw) -> dns.message.Message:
    out = srv.handle(dns.message.make_query(name, rdtype, **kw).to_wire(), tcp)
    assert out is not None
    return dns.message.from_wire(out)


def a_records(r: dns.message.Message) -> list[str]:
    return [rd.address for rrset in r.answer for rd in rrset]


def test_a_answers_every_address_rotated_with_ttl_1(server: DnsServer) -> None:
    r1, r2 = ask(server, "web.weave.local."), ask(server, "WEB.weave.local.")
    assert r1.rcode() == dns.rcode.NOERROR and r1.flags & dns.flags.AA
    assert sorted(a_records(r1)) == ["10.32.0.1", "10.32.0.2"]
    assert a_records(r1) != a_records(r2)
    assert r1.answer[0].ttl == TTL == 1


def test_unknown_name_is_nxdomain_and_other_types_nodata(server: DnsServer) -> None:
    assert ask(server, "nope.weave.local.").rcode() == dns.rcode.NXDOMAIN
    r = ask(server, "web.weave.local.", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert server.counters["nxdomain"] == 1


def test_single_label_is_tried_in_the_domain(server: DnsServer) -> None:
    assert sorted(a_records(ask(server, "web."))) == ["10.32.0.1", "10.32.0.2"]


def test_ptr_answered_locally_else_forwarded(server: DnsServer) -> None:
    r = ask(server, "2.0.32.10.in-addr.arpa.", "PTR")
    assert [rd.target.to_text() for rd in r.answer[0]] == ["web.weave.local."]
    # not ours, and no upstream: SERVFAIL (forwarding itself is a functional test)
    assert ask(server, "9.9.9.10.in-addr.arpa.", "PTR").rcode() == dns.rcode.SERVFAIL
    assert ask(server, "example.com.").rcode() == dns.rcode.SERVFAIL
    assert server.counters["forward_failed"] == 2


def test_udp_answers_are_truncated_to_fit(server: DnsServer) -> None:
    udp = server.handle(dns.message.make_query("many.weave.local.", "A").to_wire(), False)
    r = dns.message.from_wire(udp)
    assert len(udp) <= 512 and r.flags & dns.flags.TC and 0 < len(a_records(r)) < 100
    assert len(a_records(ask(server, "many.weave.local.", tcp=True))) == 100
    big = ask(server, "many.weave.local.", use_edns=0, payload=4096)
    assert len(a_records(big)) == 100 and not big.flags & dns.flags.TC


def test_other_opcodes_are_not_implemented(server: DnsServer) -> None:
    q = dns.message.make_query("web.weave.local.", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    out = server.handle(q.to_wire(), False)
    assert out is not None and dns.message.from_wire(out).rcode() == dns.rcode.NOTIMP


def _long_name_query() -> bytes:
    labels = b"".join(bytes([63]) + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 octets
    return struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + labels + struct.pack(">HH", 1, 1)


def _two_questions() -> bytes:
    q = dns.message.make_query("web.weave.local.", "A").to_wire()
    head, body = q[:12], q[12:]
    return head[:4] + struct.pack(">H", 2) + head[6:] + body + body


@pytest.mark.parametrize("wire", [
    b"", b"\x00", b"junk" * 3, _long_name_query(), _two_questions(),
    struct.pack(">HHHHHH", 1, 0x0100, 0, 0, 0, 0),  # no question
    struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
    dns.message.make_response(dns.message.make_query("web.weave.local.", "A")).to_wire(),
])
def test_malformed_queries_are_dropped_and_counted(server: DnsServer, wire: bytes) -> None:
    assert server.handle(wire, False) is None
    assert server.counters["dropped_malformed"] == 1
    assert a_records(ask(server, "web.weave.local."))  # still answering


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_handler_fuzz(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    net, rs = build(1, edges=[])
    d = WeaveDNS(SimHost(net, rs[0]), tmp_path_factory.mktemp("fz")).start()
    srv = DnsServer(d, "127.0.0.1", 0, upstream=[])
    out = srv.handle(data, False)
    assert out is None or dns.message.from_wire(out).flags & dns.flags.QR


def test_malformed_queries_are_logged_rate_limited(server: DnsServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="fabric.weave.dns"):
        for _ in range(5):
            server.handle(b"junk", False, client="10.9.9.9")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "10.9.9.9" in lines[0]
    assert server.counters["dropped_malformed"] == 5
