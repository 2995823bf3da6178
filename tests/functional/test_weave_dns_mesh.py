"""weaveDNS on real mesh peers: two `python -m fabric.weave.dns_peer` processes in a test
namespace (loopback addresses), their DNS servers queried with dnspython and with glibc
(`getent`, through /etc/netns/NS/resolv.conf, which `ip netns exec` bind-mounts).

A's names are answered by B's server; two entries with one name answer both, rotated;
other queries are forwarded to a small upstream server in the namespace (the default
upstream: resolv.conf without the server itself), SERVFAIL when it is gone; malformed
datagrams are dropped and counted; kill -9 of A hides its names at B and a restart from
its state directory brings them back, while a removed name stays removed.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.jsonlines import JsonLinesProc
from tests.functional.netns_util import add_ns, namespaces, needs_root, sh
from tests.util import wait_for

pytestmark = [needs_root, pytest.mark.root]

A_MESH, B_MESH = "127.0.0.1:6783", "127.0.0.2:6783"
A_DNS, B_DNS = "127.0.0.1:5353", "127.0.0.2:53"  # B on 53: glibc's resolver asks there
UPSTREAM = "127.0.0.9"

UPSTREAM_PY = r"""
import socket, struct, sys, threading
import dns.message, dns.rcode, dns.rrset
def answer(wire):
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    qs = q.question[0]
    name = qs.name.to_text()
    if name == "ext.example." and qs.rdtype == 1:
        r.answer.append(dns.rrset.from_text(qs.name, 60, "IN", "A", "192.0.2.7"))
    elif name == "7.2.0.192.in-addr.arpa." and qs.rdtype == 12:
        r.answer.append(dns.rrset.from_text(qs.name, 60, "IN", "PTR", "ext.example."))
    else:
        r.set_rcode(dns.rcode.NXDOMAIN)
    return r.to_wire()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((sys.argv[1], 53))
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((sys.argv[1], 53))
t.listen(8)
def tcp():
    while True:
        c, _ = t.accept()
        n = struct.unpack(">H", c.recv(2))[0]
        w = b""
        while len(w) < n:
            w += c.recv(n - len(w))
        out = answer(w)
        c.sendall(struct.pack(">H", len(out)) + out)
        c.close()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    w, peer = u.recvfrom(4096)
    u.sendto(answer(w), peer)
"""

QUERY_PY = r"""
import json, socket, sys
import dns.flags, dns.message, dns.query, dns.rcode, dns.resolver
server, port, name, rdtype, how, count = sys.argv[1:7]
out = []
for _ in range(int(count)):
    if how == "resolver":  # the stub resolver API, as an application would use it
        res = dns.resolver.Resolver(configure=False)
        res.nameservers, res.port = [server], int(port)
        try:
            out.append({"answers": [rd.to_text() for rd in res.resolve(name, rdtype)]})
        except dns.resolver.NXDOMAIN:
            out.append({"rcode": "NXDOMAIN"})
        continue
    q = dns.message.make_query(name, rdtype)
    fn = dns.query.tcp if how == "tcp" else dns.query.udp
    try:
        r = fn(q, server, port=int(port), timeout=5)
    except Exception as exc:
        out.append({"error": type(exc).__name__})
        continue
    out.append({"rcode": dns.rcode.to_text(r.rcode()), "tc": bool(r.flags & dns.flags.TC),
                "answers": [rd.to_text() for rrset in r.answer for rd in rrset]})
print(json.dumps(out))
"""

JUNK_PY = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
junk = [b"", b"\x00", b"\xff" * 40, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"]
replies = 0
for j in junk:
    s.sendto(j, (sys.argv[1], int(sys.argv[2])))
    try:
        s.recv(4096)
        replies += 1
    except OSError:
        pass
print(replies)
"""


@pytest.fixture
def ns() -> Iterator[str]:
    with namespaces("nfdns") as tag:
        name = f"{tag}x"
        add_ns(name)
        # glibc's getaddrinfo (AI_ADDRCONFIG) returns IPv4 only with a non-loopback address
        # (a veth pair inside the namespace: the dummy module may be missing)
        sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", ns=name)
        sh("ip", "addr", "add", "10.99.0.1/24", "dev", "v0", ns=name)
        sh("ip", "link", "set", "v0", "up", ns=name)
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True)
        try:
            (etc / "resolv.conf").write_text(
                f"nameserver {B_DNS.split(':')[0]}\nnameserver {UPSTREAM}\n"
                "search weave.local\noptions ndots:1 timeout:2 attempts:1\n")
            yield name
        finally:
            shutil.rmtree(etc, ignore_errors=True)


def peer(ns: str, peers: list[JsonLinesProc], state: Path, mesh: str, dns: str,
         *extra: str) -> JsonLinesProc:
    host, port = mesh.split(":")
    p = JsonLinesProc([sys.executable, "-m", "fabric.weave.dns_peer", "--state", str(state),
                       "--host", host, "--port", port, "--dns", dns, *extra], ns=ns)
    peers.append(p)
    ready = json.loads(p.line())
    assert ready["ready"], ready
    return p


def query(ns: str, server: str, name: str, rdtype: str = "A", how: str = "udp",
          count: int = 1) -> list[dict[str, Any]]:
    host, port = server.split(":")
    out = sh(sys.executable, "-c", QUERY_PY, host, port, name, rdtype, how, str(count), ns=ns)
    return json.loads(out.stdout)


def getent(ns: str, *args: str) -> str:
    return sh("getent", *args, ns=ns, check=False).stdout


def test_names_forwarding_and_bad_queries(ns: str, peers: list[JsonLinesProc],
                                          tmp_path: Path) -> None:
    up = JsonLinesProc([sys.executable, "-c", UPSTREAM_PY, UPSTREAM], ns=ns)
    peers.append(up)
    assert up.line().strip() == "ready"
    a = peer(ns, peers, tmp_path / "a", A_MESH, A_DNS)
    b = peer(ns, peers, tmp_path / "b", B_MESH, B_DNS, "--connect", A_MESH)
    assert a.cmd("add h1 10.32.0.11 c1") and a.cmd("add web 10.32.0.21 cw1")
    assert b.cmd("add web 10.32.0.22 cw2")
    assert wait_for(lambda: sorted(b.cmd("lookup web")) == ["10.32.0.21", "10.32.0.22"]
                    and b.cmd("lookup h1") == ["10.32.0.11"], timeout=15)
    # A's name answered by B's server: dnspython stub resolver, UDP and TCP
    assert query(ns, B_DNS, "h1.weave.local.", how="resolver") == [{"answers": ["10.32.0.11"]}]
    assert query(ns, B_DNS, "H1.Weave.Local.", how="tcp")[0]["answers"] == ["10.32.0.11"]
    # one name, two peers' entries: both, the order rotating per query
    two = query(ns, B_DNS, "web.weave.local.", count=2)
    assert [sorted(r["answers"]) for r in two] == [["10.32.0.21", "10.32.0.22"]] * 2
    assert two[0]["answers"] != two[1]["answers"]
    # glibc through the namespace's resolv.conf (search weave.local)
    assert getent(ns, "hosts", "h1.weave.local").split()[:2] == ["10.32.0.11", "h1.weave.local"]
    assert getent(ns, "hosts", "h1").split()[0] == "10.32.0.11"
    v4 = {line.split()[0] for line in getent(ns, "ahostsv4", "web.weave.local").splitlines()}
    assert v4 == {"10.32.0.21", "10.32.0.22"}
    # AAAA of a weave name: NOERROR, empty; unknown: NXDOMAIN
    assert query(ns, B_DNS, "h1.weave.local.", "AAAA")[0] == {"rcode": "NOERROR", "tc": False,
                                                              "answers": []}
    assert query(ns, B_DNS, "nobody.weave.local.")[0]["rcode"] == "NXDOMAIN"
    # PTR: ours locally, others forwarded; other names forwarded (upstream from resolv.conf)
    assert query(ns, B_DNS, "11.0.32.10.in-addr.arpa.", "PTR")[0]["answers"] == [
        "h1.weave.local."]
    assert query(ns, B_DNS, "7.2.0.192.in-addr.arpa.", "PTR")[0]["answers"] == ["ext.example."]
    assert query(ns, B_DNS, "ext.example.")[0]["answers"] == ["192.0.2.7"]
    assert query(ns, B_DNS, "ext.example.", how="tcp")[0]["answers"] == ["192.0.2.7"]
    assert query(ns, B_DNS, "missing.example.")[0]["rcode"] == "NXDOMAIN"
    assert getent(ns, "hosts", "ext.example").split()[0] == "192.0.2.7"
    st = b.cmd("status")
    assert st["server"]["upstream"] == [f"{UPSTREAM}:53"]  # itself excluded
    # malformed datagrams: no reply, counted, the server keeps answering
    out = sh(sys.executable, "-c", JUNK_PY, *B_DNS.split(":"), ns=ns)
    assert out.stdout.strip() == "0"
    assert b.cmd("status")["server"]["counters"]["dropped_malformed"] == 4
    assert query(ns, B_DNS, "h1.weave.local.")[0]["answers"] == ["10.32.0.11"]
    # upstream gone: SERVFAIL after the timeout, local names unaffected
    up.kill9()
    t0 = time.monotonic()
    assert query(ns, B_DNS, "ext.example.")[0]["rcode"] == "SERVFAIL"
    assert time.monotonic() - t0 < 5
    assert query(ns, B_DNS, "h1.weave.local.")[0]["answers"] == ["10.32.0.11"]
    # a clean stop: server threads, worker pool and mesh end promptly
    t0 = time.monotonic()
    b.proc.stdin.write("quit\n")
    b.proc.stdin.flush()
    assert b.proc.wait(timeout=15) == 0 and time.monotonic() - t0 < 5


def test_kill9_hides_names_and_restart_brings_them_back(ns: str, peers: list[JsonLinesProc],
                                                         tmp_path: Path) -> None:
    a = peer(ns, peers, tmp_path / "a", A_MESH, A_DNS)
    b = peer(ns, peers, tmp_path / "b", B_MESH, B_DNS, "--connect", A_MESH)
    a.cmd("add h1 10.32.0.11 c1")
    a.cmd("add gone 10.32.0.12 c2")
    assert wait_for(lambda: b.cmd("lookup gone") == ["10.32.0.12"], timeout=15)
    assert a.cmd("remove gone") == 1
    assert wait_for(lambda: b.cmd("lookup gone") == [], timeout=10)
    origin = b.cmd("entries")[0]["origin"]  # A's peer name
    with pytest.raises(AssertionError, match="reachable"):
        b.cmd(f"rmpeer {origin}")
    a.kill9()
    t0 = time.monotonic()
    assert wait_for(lambda: query(ns, B_DNS, "h1.weave.local.")[0]["rcode"] == "NXDOMAIN",
                    timeout=10)
    hidden_after = time.monotonic() - t0
    assert b.cmd("status")["hidden_unreachable"] == 1
    # restart from the same state directory: same peer name, same names, one version up
    a2 = peer(ns, peers, tmp_path / "a", A_MESH, A_DNS)
    t0 = time.monotonic()
    assert wait_for(lambda: query(ns, B_DNS, "h1.weave.local.")[0]["answers"] == [
        "10.32.0.11"], timeout=20)
    back_after = time.monotonic() - t0
    time.sleep(2)  # full gossip both ways: the removed name must stay removed
    assert b.cmd("lookup gone") == [] and a2.cmd("lookup gone") == []
    seen = {e["hostname"]: e for e in b.cmd("entries")}
    assert seen["h1.weave.local."]["version"] == 2 and seen["gone.weave.local."]["tombstone"]
    print(f"\nkill -9: names hidden at B after {hidden_after:.2f} s; "
          f"back {back_after:.2f} s after the restart")
    # rmpeer of the dead peer removes its names for good (until it returns)
    a2.kill9()
    assert wait_for(lambda: b.cmd("status")["hidden_unreachable"] == 1, timeout=10)
    assert b.cmd(f"rmpeer {origin}") == 2
    assert b.cmd("entries") == []


def test_server_binds_before_its_address_exists(ns: str, peers: list[JsonLinesProc],
                                               tmp_path: Path) -> None:
    addr = "10.99.0.7"  # not configured yet (the bridge gets its address later)
    bad = JsonLinesProc([sys.executable, "-m", "fabric.weave.dns_peer", "--state",
                         str(tmp_path / "x"), "--dns", f"{addr}:53", "--upstream"], ns=ns)
    peers.append(bad)
    refused = json.loads(bad.line())
    assert not refused["ready"] and "cannot listen" in refused["error"]
    a = peer(ns, peers, tmp_path / "a", A_MESH, f"{addr}:53", "--freebind", "--upstream")
    a.cmd("add h1 10.32.0.11 c1")
    sh("ip", "addr", "add", f"{addr}/32", "dev", "v0", ns=ns)
    assert query(ns, f"{addr}:53", "h1.weave.local.")[0]["answers"] == ["10.32.0.11"]
    assert query(ns, f"{addr}:53", "ext.example.")[0]["rcode"] == "SERVFAIL"  # upstream []
