"""How the sleeve turns a mesh view into its forwarding table (no sockets, no kernel)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import attrs

from fabric.api import NetworkContext, NetworkSpec, Node
from fabric.dataplane import FLOOD, WeaveRoutes
from fabric.weave.control import MeshView
from fabric.weave.options import WeaveOptions
from fabric.weave.peerinfo import PeerInfo
from fabric.weave.sleeve import Sleeve

A, B, C = 0x0A0000000001, 0x0A0000000002, 0x0A0000000003


def _b(n: int) -> bytes:
    return n.to_bytes(6, "big")


def _sleeve(tmp_path: Path, me: int) -> Sleeve:
    spec = NetworkSpec("weave", IPv4Network("10.32.0.0/12"), "weave-sleeve")
    ctx = NetworkContext(spec, Node("h1", IPv4Address("198.18.0.11"), "eth0", 1500), tmp_path)
    opts = WeaveOptions.parse({}, "weave.br")
    s = Sleeve(ctx, opts, control=None, bridge=None)  # type: ignore[arg-type]
    s.routes = WeaveRoutes(_b(me))
    return s


def _info(n: int, key: bytes = b"") -> PeerInfo:
    return PeerInfo(n, 1, IPv4Address(f"198.18.0.{10 + (n & 0xff)}"), 6783, 6784, key)


def _line_view() -> MeshView:
    """A - B - C (A and C are not connected): A's view."""
    return MeshView(A, frozenset({B, C}), frozenset({B}), {A: A, B: B, C: B},
                    {A: (B,), B: (), C: ()}, {B: _info(B), C: _info(C)}, {})


def test_tree_mode_relays_and_floods_along_the_tree(tmp_path) -> None:
    s = _sleeve(tmp_path, A)
    s.apply(_line_view())
    t = s.routes
    assert set(t.neighbours) == {_b(B)}  # only direct connections get datagrams
    assert t.next_hop(_b(C)).ip == "198.18.0.12"  # C through B
    assert t.flood_mode == "tree"
    out = t.tx_targets(b"\xff" * 6)
    assert [(a.ip, d) for a, d in out] == [("198.18.0.12", FLOOD)]


def test_fastdp_mode_floods_one_copy_per_sleeve_peer_and_refuses_kernel_peers(tmp_path) -> None:
    s = _sleeve(tmp_path, A)
    s.only = frozenset({C})  # B is on the kernel path, C (relayed) on sleeve
    s.apply(_line_view())
    t = s.routes
    assert t.flood_mode == "targets"
    out = t.tx_targets(b"\xff" * 6)
    assert [(a.ip, d) for a, d in out] == [("198.18.0.12", _b(C))]  # relayed via B, to C
    assert t.rx_actions(_b(B), _b(B), _b(A), 16)[2] == "kernel_path"
    assert t.rx_actions(_b(B), _b(C), _b(A), 16) == (True, (), "")


def test_encrypted_sleeve_waits_for_a_neighbours_public_key(tmp_path) -> None:
    s = _sleeve(tmp_path, A)
    s.config = attrs.evolve(s.config, encrypt=True, psk=b"k" * 32)
    s.apply(_line_view())
    assert s.routes.neighbours == {} and s.missing_info == {B}
    view = _line_view()
    view.infos[B] = _info(B, key=b"\x01" * 32)
    s.apply(view)
    assert set(s.routes.neighbours) == {_b(B)} and not s.missing_info
