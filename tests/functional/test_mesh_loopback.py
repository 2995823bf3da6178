"""Real mesh peers on loopback addresses (127.77.0.0/16, root namespace, no devices).

20 peers with a password converge; a wrong password is refused and counted; a
peer connected only through another one is reached by unicast; nothing of the
gossip is readable on the wire.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from fabric.mesh.router import RouterConfig
from fabric.mesh.tcp import MeshNode
from tests.unit.mesh.helpers import Recorder

CFG = dict(gossip_interval=1.0, relay_delay=0.02, backoff_base=0.2, backoff_max=1.0)


def wait(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def node(made: list[MeshNode], i: int, password: str | None = "s3cret") -> MeshNode:
    n = MeshNode(host=f"127.77.0.{i}", port=0, nickname=f"n{i}", password=password,
                 config=RouterConfig(**CFG)).start()
    made.append(n)
    return n


def peer_counts(ns: list[MeshNode]) -> list[int]:
    return [n.call(lambda n=n: len(n.router.topology.reachable())) for n in ns]


def test_twenty_peers_with_password_converge(peers: list[MeshNode]) -> None:
    ns = [node(peers, i + 1) for i in range(20)]
    for i, n in enumerate(ns[1:], 1):  # a chain plus a few chords: partial connectivity
        targets = [ns[i - 1].address] + ([ns[(i * 7) % i].address] if i > 2 else [])
        n.connect(targets)
    assert wait(lambda: peer_counts(ns) == [20] * 20), peer_counts(ns)
    st = ns[0].describe()
    assert len(st["peers"]) == 20 and not st["rejected"]


def test_wrong_password_is_refused(peers: list[MeshNode]) -> None:
    a = node(peers, 30)
    bad = node(peers, 31, password="wrong")
    clear = node(peers, 32, password=None)
    bad.connect([a.address])
    clear.connect([a.address])
    assert wait(lambda: sum(a.describe()["rejected"].values()) >= 2)
    time.sleep(0.5)
    assert a.call(lambda: len(a.router.conns)) == 0
    err = {c["address"]: c.get("error", "") for c in bad.describe()["connections"]}
    assert "auth-failed" in err[a.address]
    err = {c["address"]: c.get("error", "") for c in clear.describe()["connections"]}
    assert "password" in err[a.address]
    rej = a.describe()["rejected"]
    assert rej.get("handshake:auth-failed", 0) >= 1 and rej.get("handshake:password-mismatch")


def test_unicast_via_middle_peer(peers: list[MeshNode]) -> None:
    a, b, c = node(peers, 40), node(peers, 41), node(peers, 42)
    b.connect([a.address])
    c.connect([b.address])
    inboxes = [n.call(lambda n=n: (n.router.new_gossip("app", box := Recorder()), box)[1])
               for n in (a, b, c)]
    assert wait(lambda: peer_counts([a, b, c]) == [3, 3, 3])
    assert c.name not in a.call(lambda: set(a.router.conns))
    assert a.call(lambda: a.router.topology.unicast_routes()[c.name]) == b.name
    assert a.call(lambda: a.router.channels["app"].gossip_unicast(c.name, b"via B"))
    assert wait(lambda: inboxes[2].unicast == [(a.name, b"via B")], 5)
    assert inboxes[1].unicast == []


def test_hostile_bytes_on_the_port_are_counted(peers: list[MeshNode]) -> None:
    a = node(peers, 50)
    host, port = a.address.rsplit(":", 1)
    for junk in (b"GET / HTTP/1.0\r\n\r\n" + b"x" * 100, b"NFMESH\x05\x09\x00" + b"\0" * 32,
                 b"\xff" * 64):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    assert wait(lambda: sum(a.describe()["rejected"].values()) >= 3)
    b = node(peers, 51)
    b.connect([a.address])  # the peer still works
    assert wait(lambda: peer_counts([a, b]) == [2, 2])


def test_nothing_readable_on_the_wire(peers: list[MeshNode]) -> None:
    """Tap the byte stream of an encrypted connection through a relay socket."""
    a = node(peers, 60)
    a.call(lambda: a.router.new_gossip("app", Recorder()))
    relay = socket.socket()
    relay.bind(("127.77.0.61", 0))
    relay.listen(1)
    seen = bytearray()
    import threading

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                seen.extend(data)
                dst.sendall(data)
        except OSError:
            pass

    def serve() -> None:
        cli, _ = relay.accept()
        host, port = a.address.rsplit(":", 1)
        up = socket.create_connection((host, int(port)))
        threading.Thread(target=pump, args=(up, cli), daemon=True).start()
        pump(cli, up)

    threading.Thread(target=serve, daemon=True).start()
    b = node(peers, 62)
    b.connect([f"127.77.0.61:{relay.getsockname()[1]}"])
    assert wait(lambda: peer_counts([a, b]) == [2, 2])
    b.call(lambda: b.router.channels.get("app") or b.router.new_gossip("app", Recorder()))
    b.call(lambda: b.router.channels["app"].gossip_unicast(a.name, b"TOPSECRET-PAYLOAD"))
    time.sleep(0.5)
    relay.close()
    assert len(seen) > 200
    for needle in (b"TOPSECRET", b"n60", b"n62", b"topology", b"ipam"):
        assert needle not in seen
