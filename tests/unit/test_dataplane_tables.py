"""Peer tables, UDP GSO/GRO on loopback, engine and backend configuration (no root)."""

from __future__ import annotations

import socket
import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from fabric.api import NetworkContext, NetworkSpec, Node
from fabric.dataplane import EngineConfig, MacTable, PeerAddr, PeerTable
from fabric.dataplane.udp import open_udp
from fabric.errors import BackendError, ConfigError
from fabric.plugins import load_plugin


def test_longest_prefix_wins_and_updates_apply_at_once() -> None:
    t = PeerTable()
    a, b = PeerAddr("198.19.0.1", 8285), PeerAddr("198.19.0.2", 8285)
    t.set(IPv4Network("10.1.0.0/16"), a)
    t.set(IPv4Network("10.1.2.0/24"), b)
    assert t.lookup_ip("10.1.2.3") is b and t.lookup_ip("10.1.3.3") is a
    assert t.lookup_ip("10.2.0.1") is None
    t.remove(IPv4Network("10.1.2.0/24"))
    assert t.lookup_ip("10.1.2.3") is a  # the cached answer was dropped
    assert t.by_source("198.19.0.1") is a and t.by_source("198.19.0.2") is None


def test_lookups_stay_consistent_while_the_table_changes() -> None:
    t = PeerTable()
    peer = PeerAddr("198.19.0.9", 8285)
    stop = threading.Event()
    seen: set = set()

    def reader() -> None:
        dst = IPv4Address("10.5.1.1").packed
        while not stop.is_set():
            seen.add(t.lookup(dst))

    th = threading.Thread(target=reader)
    th.start()
    try:
        for _ in range(300):
            t.set(IPv4Network("10.5.1.0/24"), peer)
            t.remove(IPv4Network("10.5.1.0/24"))
    finally:
        stop.set()
        th.join()
    t.set(IPv4Network("10.5.1.0/24"), peer)
    assert seen <= {peer, None} and t.lookup_ip("10.5.1.1") is peer


def test_mac_table_learns_floods_and_forgets_removed_peers() -> None:
    a, b = PeerAddr("198.19.0.1", 1), PeerAddr("198.19.0.2", 1)
    m = MacTable([a, b])
    mac = bytes.fromhex("0a0000000001")
    assert m.lookup(mac) is None  # unknown: flood to m.peers
    m.learn(mac, a)
    m.learn(b"\xff" * 6, b)  # broadcast source is never learned
    assert m.lookup(mac) is a and m.lookup(b"\xff" * 6) is None
    m.remove("198.19.0.1")
    assert m.lookup(mac) is None and m.peers == (b,)


def test_udp_gso_send_and_gro_receive_on_loopback() -> None:
    rx = open_udp("127.0.0.1", 0)
    tx = open_udp("127.0.0.1", 0)
    try:
        if not (tx.gso and rx.gro):
            pytest.skip(f"kernel lacks UDP GSO/GRO: {tx.reason} {rx.reason}")
        seg = 1200
        payload = bytes(range(256)) * 40  # 10240 bytes: 8 full segments + 640
        drops: dict = {}
        sent = tx.send_batch(payload, seg, len(payload), rx.sock.getsockname(), drops)
        assert sent == 9 and not drops
        buf = bytearray(65536)
        got = b""
        sizes = []
        deadline = time.monotonic() + 2
        while len(got) < len(payload) and time.monotonic() < deadline:
            try:
                n, gso, _addr = rx.recv_batch(buf)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            sizes.append(gso or n)
            got += bytes(buf[:n])
        assert got == payload
        assert all(s == seg for s in sizes[:-1] or sizes)
        assert rx.rcvbuf >= 4 << 20 or rx.rcvbuf > 0
    finally:
        rx.sock.close()
        tx.sock.close()


def test_busy_port_is_a_clear_error() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(BackendError, match="cannot bind UDP") as err:
            open_udp("127.0.0.1", s.getsockname()[1])
        assert err.value.fix
        with pytest.raises(BackendError, match="cannot bind UDP"):
            open_udp("127.0.0.1", 70000)
    finally:
        s.close()


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "ipip"}, "mode"),
    ({"port": 0}, "port"),
    ({"encrypt": True}, "L2"),
    ({"mode": "tap", "cipher": "rot13"}, "cipher"),
    ({"underlay_mtu": 100}, "MTU"),
])
def test_engine_config_errors(kwargs, match) -> None:
    base = {"mode": "tun", "device": "nfdp0", "listen_ip": "198.19.255.1"}
    with pytest.raises(ConfigError, match=match):
        EngineConfig(**{**base, **kwargs})


def test_engine_mtus() -> None:
    assert EngineConfig("tun", "d", "198.19.0.1").mtu == 1472  # flannel: underlay - 28
    assert EngineConfig("tap", "d", "198.19.0.1").mtu == 1438


def _ctx(tmp_path, config: dict, mtu: int = 1500) -> NetworkContext:
    spec = NetworkSpec(name="t", cidr=IPv4Network("10.99.0.0/16"), backend="flannel-udp",
                       backend_config=config)
    return NetworkContext(spec=spec, node=Node("n1", IPv4Address("198.18.0.11"), "eth0", mtu),
                          state_dir=tmp_path)


def test_flannel_udp_backend_defaults(tmp_path) -> None:
    cls = load_plugin("backend", "flannel-udp")
    b = cls(_ctx(tmp_path, {"Type": "udp"}))
    assert b.mtu == 1472 and b.port == 8285 and b.device == "t.tun"
    assert b.capabilities.userspace and cls.default_ipam == "subnet"


@pytest.mark.parametrize("config,field", [
    ({"Port": "8285"}, "Port"), ({"Port": 70000}, "Port"), ({"Offload": "yes"}, "Offload"),
    ({"InnerChecksum": "none"}, "InnerChecksum"), ({"VNI": 1}, "unknown option"),
])
def test_flannel_udp_backend_config_errors(tmp_path, config, field) -> None:
    cls = load_plugin("backend", "flannel-udp")
    with pytest.raises(ConfigError, match=field):
        cls(_ctx(tmp_path, config))
