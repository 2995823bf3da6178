"""WeaveRoutes: learning, expiry, unicast/relay decisions, flood rules, loops (no sockets)."""

from __future__ import annotations

import pytest

from fabric.dataplane import FLOOD, EngineConfig, PeerAddr, WeaveRoutes, name_bytes
from fabric.errors import ConfigError

A, B, C, D = (bytes([0x0A, 0, 0, 0, 0, i]) for i in range(1, 5))
ADDR = {n: PeerAddr(f"198.19.0.{n[-1]}", 6783) for n in (A, B, C, D)}
MAC1, MAC2, MAC3 = (bytes([0x02, 0, 0, 0, 1, i]) for i in range(1, 4))


def table(local: bytes, neighbours, unicast, flood=None, **kw) -> WeaveRoutes:
    t = WeaveRoutes(local, **kw)
    t.set_neighbours({n: ADDR[n] for n in neighbours})
    t.set_unicast(unicast)
    if flood is not None:
        t.set_flood(flood)
    return t


def full_mesh(local: bytes) -> WeaveRoutes:
    others = [n for n in (A, B, C) if n != local]
    return table(local, others, {n: n for n in others}, {local: others})


def test_names_are_six_bytes_and_bad_names_are_clear_errors() -> None:
    assert name_bytes("0a:00:00:00:00:01") == A
    for bad in ("0a:00", "zz:00:00:00:00:01", b"\xff" * 6, b"12345"):
        with pytest.raises(ConfigError, match="6 bytes") as err:
            name_bytes(bad)
        assert err.value.fix
    with pytest.raises(ConfigError, match="own neighbour"):
        WeaveRoutes(A).set_neighbours({A: ADDR[A]})


def test_unknown_unicast_floods_then_learned_mac_goes_to_its_origin() -> None:
    t = full_mesh(A)
    flood = t.tx_targets(MAC2)
    assert sorted(flood, key=lambda x: x[0].ip) == [(ADDR[B], FLOOD), (ADDR[C], FLOOD)]
    assert t.learn(MAC2, C)
    assert t.tx_targets(MAC2) == ((ADDR[C], C),)
    assert t.tx_targets(b"\xff" * 6) == flood  # broadcast always floods
    assert t.tx_targets(b"\x01\x00\x5e\x00\x00\x01") == flood  # so does multicast
    group = b"\x01" + MAC1[1:]
    assert t.learn(group, C) and t.owner(group) is None  # group sources are never learned


def test_relay_uses_next_hop_and_never_delivers_for_others() -> None:
    # line A - B - C: A reaches C via B
    a = table(A, [B], {B: B, C: B}, {A: [B]})
    b = table(B, [A, C], {A: A, C: C}, {A: [C], C: [A], B: [A, C]})
    a.learn(MAC3, C)
    assert a.tx_targets(MAC3) == ((ADDR[B], C),)  # header dst C, sent to B
    here, fwd, why = b.rx_actions(A, A, C, ttl=16)
    assert (here, fwd, why) == (False, ((ADDR[C], C),), "")
    assert b.rx_actions(A, A, B, 16) == (True, (), "")
    assert b.rx_actions(A, A, D, 16) == (False, (), "no_route")


def test_flood_goes_to_tree_children_never_back_to_sender_or_origin() -> None:
    b = table(B, [A, C, D], {A: A, C: C, D: D}, {A: [C, D, A], C: [A], B: [A, C, D]})
    here, fwd, why = b.rx_actions(A, A, FLOOD, 16)
    assert here and not why and [p for p, _ in fwd] == [ADDR[C], ADDR[D]]
    assert all(d == FLOOD for _, d in fwd)
    # the same flood relayed to us by C (sender C, origin A): not back to C nor to A
    here, fwd, _ = b.rx_actions(C, A, FLOOD, 16)
    assert [p for p, _ in fwd] == [ADDR[D]]
    assert b.rx_actions(A, B, FLOOD, 16) == (False, (), "own_origin")


def test_every_peer_gets_a_flood_exactly_once_along_the_tree() -> None:
    # star through B plus a direct A-C link the tree does not use: C must get one copy, not two
    tables = {
        A: table(A, [B, C], {B: B, C: C}, {A: [B]}),
        B: table(B, [A, C], {A: A, C: C}, {A: [C]}),
        C: table(C, [A, B], {A: A, B: B}, {A: []}),
    }
    by_addr = {ADDR[n]: n for n in tables}
    got: dict[bytes, int] = {}
    queue = [(A, to, d, 16) for to, d in ((by_addr[p], d) for p, d in tables[A].tx_targets(
        b"\xff" * 6))]
    while queue:
        sender, node, dst, ttl = queue.pop()
        here, fwd, _ = tables[node].rx_actions(sender, A, dst, ttl)
        got[node] = got.get(node, 0) + here
        queue += [(node, by_addr[p], d, ttl - 1) for p, d in fwd]
    assert got == {B: 1, C: 1}


def test_hop_limit_stops_a_relay_loop_while_tables_converge() -> None:
    # B thinks C is behind D, D thinks C is behind B: the TTL ends the circulation
    b = table(B, [A, D], {C: D, A: A, D: D})
    d = table(D, [B], {C: B, B: B})
    assert d.rx_actions(B, A, C, 16) == (False, (), "loop")  # direct bounce: dropped at once
    assert b.rx_actions(A, A, C, 1) == (False, (), "ttl")
    hops, node, sender, ttl = 0, b, A, 5
    while True:
        here, fwd, why = node.rx_actions(sender, A, C, ttl)
        if not fwd:
            break
        hops += 1
        ttl -= 1
        sender, node = (B, d) if node is b else (D, b)
    assert why in ("loop", "ttl") and hops < 5


def test_flood_targets_replicate_at_the_origin_and_skip_excluded_peers() -> None:
    t = table(A, [B], {B: B, C: B, D: B})
    t.set_flood_targets({A: [B, C, D]})
    t.set_excluded([D])  # D is on the kernel fast path
    assert t.flood_mode == "targets"
    assert t.tx_targets(b"\xff" * 6) == ((ADDR[B], B), (ADDR[B], C))
    # a relay in targets mode forwards unicast copies, never re-floods
    b = table(B, [A, C], {A: A, C: C})
    b.set_flood_targets({B: [A, C]})
    assert b.rx_actions(A, A, FLOOD, 16) == (True, (), "")
    t.learn(MAC3, D)
    assert t.tx_targets(MAC3) == "excluded"
    t.set_flood({A: [B, D]})  # excluded peers never get a flood in tree mode either
    assert t.tx_targets(b"\xff" * 6) == ((ADDR[B], FLOOD),)


def test_macs_expire_and_go_with_their_unreachable_origin() -> None:
    t = full_mesh(A)
    t2 = table(A, [B, C], {B: B, C: C}, {A: [B, C]}, mac_expiry=10)
    t2.learn(MAC1, B, now=100.0)
    t2.learn(MAC2, C, now=105.0)
    assert t2.expire(now=112.0) == 1 and t2.owner(MAC1) is None and t2.owner(MAC2) == C
    t.learn(MAC1, B)
    t.learn(MAC2, C)
    t.set_unicast({B: B})  # C became unreachable
    assert t.owner(MAC1) == B and t.owner(MAC2) is None
    assert t.tx_targets(MAC2) != "no_route"  # unknown again: flooded


def test_our_own_mac_from_the_wire_is_a_conflict_and_never_learned() -> None:
    t = full_mesh(A)
    t.learn_local(MAC1)
    assert not t.learn(MAC1, B)
    assert t.owner(MAC1) == A and t.tx_targets(MAC1) == "local_dst"
    t.learn(MAC2, B)
    t.learn_local(MAC2)  # seen on our bridge: local wins, the remote entry goes
    assert t.owner(MAC2) == A


def test_mac_table_is_bounded() -> None:
    t = table(A, [B], {B: B}, {A: [B]}, max_macs=8)
    for i in range(50):
        t.learn(bytes([2, 0, 0, 0, 0, i]), B, now=float(i))
    assert len(t.macs(now=50.0)) == 8 and t.owner(bytes([2, 0, 0, 0, 0, 49])) == B
    st = t.status()
    assert st["macs"] == {"remote": 8, "local": 0, "max": 8, "expiry": 600.0}


def test_routed_mtu_is_computed_from_the_header() -> None:
    plain = EngineConfig("tap", "d", "198.19.0.1", routed=True)
    sealed = EngineConfig("tap", "d", "198.19.0.1", routed=True, encrypt=True)
    assert plain.overhead == 20 + 8 + 33 + 14 and plain.mtu == 1500 - 75
    assert sealed.overhead == plain.overhead + 16 and sealed.mtu == 1409
    assert EngineConfig("tap", "d", "198.19.0.1").mtu == 1438  # classic format unchanged
    with pytest.raises(ConfigError, match="tap"):
        EngineConfig("tun", "d", "198.19.0.1", routed=True)
    with pytest.raises(ConfigError, match="hop_limit"):
        EngineConfig("tap", "d", "198.19.0.1", routed=True, hop_limit=1)


def test_public_surface_and_bench_flags() -> None:
    import fabric.dataplane as dp
    from fabric.bench.dataplane import run

    assert {"WeaveRoutes", "PathHealth", "FLOOD", "name_bytes"} <= set(dp.__all__)
    assert all(hasattr(dp, n) for n in dp.__all__)
    with pytest.raises(ConfigError, match="--routed needs --mode tap"):
        run("tun", routed=True)
    with pytest.raises(ConfigError, match="compares the routed format") as err:
        run("tap", vs_classic=True)
    assert err.value.fix == "add --routed"


def test_kernel_path_origins_are_not_delivered_but_still_relayed() -> None:
    # B has A on weave-fastdp's kernel path: A's frames arriving over sleeve are not
    # delivered (the bridge must learn A's MACs behind VXLAN), relays for C still go on.
    b = table(B, [A, C], {A: A, C: C})
    b.set_flood_targets({B: [C]})
    b.set_no_deliver([A])
    assert b.rx_actions(A, A, B, 16) == (False, (), "kernel_path")
    here, fwd, why = b.rx_actions(A, A, FLOOD, 16)
    assert not here and why == "kernel_path"
    assert b.rx_actions(A, A, C, 16) == (False, ((ADDR[C], C),), "")
    assert b.rx_actions(C, C, B, 16) == (True, (), "")
    b.set_no_deliver(())
    assert b.rx_actions(A, A, B, 16) == (True, (), "")
