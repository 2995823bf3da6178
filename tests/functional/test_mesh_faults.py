"""Issue 11 control-plane defects on real peer processes and sockets (loopback
127.77.3.0/24 and 127.77.4.0/24 in the root namespace; no devices, no routes).

* a copied state directory (same peer name) is detected and the copy refuses to allocate;
* a peer removed with rmpeer and restarted from its old state refuses to allocate and the
  ring views converge (no range going back and forth);
* refused handshakes are logged with the remote address, rate-limited;
* an all-observer ring IPAM says that nobody will create a ring.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from fabric.errors import IPAMError
from fabric.ipam.ring import RingIPAM
from fabric.mesh.names import fmt_name
from fabric.mesh.router import RouterConfig
from fabric.mesh.tcp import MeshNode
from tests.functional.mesh_util import Peer, ring_ctx, until


def test_copied_state_directory_is_detected_and_refused(tmp_path: Path,
                                                        peers: list[Peer]) -> None:
    a = Peer(tmp_path / "a", "127.77.3.1", "--init", "consensus=1")
    peers.append(a)
    b = Peer(tmp_path / "b", "127.77.3.2", "--init", "observer", "--connect", a.address)
    peers.append(b)
    until(lambda: b.cmd("status")["ipam"]["ready"])
    handed = {until(lambda i=i: a.cmd(f"alloc h{i}")) for i in range(30)}
    shutil.copytree(tmp_path / "a", tmp_path / "c")  # the copy has a's name and ring
    c = Peer(tmp_path / "c", "127.77.3.3", "--init", "consensus=1", "--connect", b.address)
    peers.append(c)
    assert c.name == a.name
    st = until(lambda: (s := c.cmd("status"))["name_collision"] and s)
    assert "refuses" in st["name_collision"]["message"]
    issued = set()
    for i in range(30):
        out = c.request(f"alloc copy{i}")
        assert not out["ok"] and "name" in out["error"], out
        issued |= {out.get("result")} - {None}
    assert not issued & handed
    assert b.cmd("status")["rejected"].get("name-collision", 0) >= 1  # the witness says so
    assert a.cmd("alloc more") not in handed  # the original keeps working
    assert a.cmd("status")["name_collision"] is None


def test_removed_peer_restarted_is_refused_and_views_converge(tmp_path: Path,
                                                               peers: list[Peer]) -> None:
    a = Peer(tmp_path / "a", "127.77.3.11")
    b = Peer(tmp_path / "b", "127.77.3.12", "--connect", a.address)
    c = Peer(tmp_path / "c", "127.77.3.13", "--connect", a.address, b.address)
    peers.extend([a, b, c])
    until(lambda: all(p.cmd("status")["ipam"]["ready"] for p in peers))
    lost = [until(lambda i=i: c.cmd(f"alloc c{i}")) for i in range(5)]
    c.kill9()
    until(lambda: len(a.cmd("status")["peers"]) == 2)
    assert a.cmd(f"rmpeer {fmt_name(c.name)}") >= 1
    # the heir hands out addresses in the inherited range (c's pods are gone)
    inherited = str(IPv4Address(lost[0]) + 10)
    until(lambda: any(p.request(f"claim heir {inherited}")["ok"] for p in (a, b)))
    got = {until(lambda i=i, p=p: p.cmd(f"alloc x{i}{p.name}"))
           for i in range(40) for p in (a, b)}
    port = int(c.address.rsplit(":", 1)[1])
    c.args[c.args.index("--port") + 1] = str(port)
    c.start()  # back from its old state, under its old name
    st = until(lambda: (s := c.cmd("status"))["ipam"]["refusing"] and s)
    assert "removed with rmpeer" in st["ipam"]["refusing"]
    out = c.request("alloc new")
    assert not out["ok"] and "removed" in out["error"]

    def agree() -> bool:
        views = [json.dumps(p.cmd("status")["ipam"]["owners"], sort_keys=True) for p in peers]
        return len(set(views)) == 1
    until(agree)
    time.sleep(2)  # and they stay agreed: nobody takes the range back
    assert agree()
    owners = {o["peer"] for o in a.cmd("status")["ipam"]["owners"]}
    assert fmt_name(c.name) not in owners and len(got) == 80


def test_refused_handshakes_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fabric.mesh")
    n = MeshNode(host="127.77.4.1", port=0, nickname="lg",
                 config=RouterConfig(log_interval=60)).start()
    try:
        for _ in range(5):
            s = socket.create_connection(("127.77.4.1", n.port), timeout=5,
                                         source_address=("127.77.4.2", 0))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"x" * 64)
            s.recv(100)
            s.close()
        assert until(lambda: n.describe()["rejected"].get("handshake:bad-preamble") == 5, 5)
    finally:
        n.stop()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, lines  # one line per reason and address per minute
    assert "127.77.4.2" in lines[0] and "bad-preamble" in lines[0]


def test_all_observer_ring_ipam_says_nobody_will_create_a_ring(tmp_path: Path) -> None:
    ipam = RingIPAM(ring_ctx(tmp_path, init="observer", wait=1))
    try:
        with pytest.raises(IPAMError, match="no peer in this mesh will create") as err:
            ipam.start({})
        assert "consensus" in err.value.fix
    finally:
        ipam.stop()


def test_mismatched_seed_lists_stop_every_peer(tmp_path: Path, peers: list[Peer]) -> None:
    """Six real peers in a line, two seed lists: every peer refuses to allocate, not only
    the two at the boundary (issue 11: the others kept allocating from two rings)."""
    names = [f"02:00:00:00:07:{i:02x}" for i in range(1, 7)]
    line: list[Peer] = []
    for i, name in enumerate(names):
        seed = names[0] if i < 3 else names[5]
        extra = ["--connect", line[-1].address] if i and i != 3 else []
        line.append(Peer(tmp_path / f"p{i}", f"127.77.3.{21 + i}", "--name", name,
                         "--init", f"seed={seed}", *extra))
        peers.append(line[-1])
    until(lambda: all(p.cmd("status")["ipam"]["ready"] for p in line))
    assert a_alloc(line[0]) and a_alloc(line[5])  # two rings, each fine on its own
    line[3].cmd(f"connect {line[2].address}")  # the rings meet between p2 and p3
    until(lambda: all((p.cmd("status")["ipam"]["refusing"] or "").startswith("ring conflict")
                      for p in line), timeout=30)
    for p in (line[0], line[5]):  # far from the boundary too
        out = p.request("alloc after")
        assert not out["ok"] and "initialised separately" in out["error"], out


def a_alloc(p: Peer) -> str:
    return until(lambda: p.cmd("alloc before"))
