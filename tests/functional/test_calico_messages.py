"""calico-bgp pure logic, no root: exabgp JSON validation, options, config files checked by the
real exabgp and BIRD parsers, the route table's graceful hold."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network

import pytest
from fabric_calico_bgp.config import parse_config
from fabric_calico_bgp.exabgp import BgpNeighbor, Speaker, exabgp_env, render_config
from fabric_calico_bgp.messages import (
    MessageError,
    Notice,
    PeerState,
    RouteUpdate,
    parse_message,
)
from fabric_calico_bgp.rib import RouteTable
from hypothesis import given
from hypothesis import strategies as st

from fabric.errors import ConfigError
from fabric.lab.bird import BirdConfig, bird_available, parse_routes, render_bird_config

NB = ('"neighbor": { "address": { "local": "198.18.0.11", "peer": "198.18.0.12" }, '
      '"asn": { "local": 64512, "peer": 64512 }')
HEAD = '{ "exabgp": "5.0.0", "time": 1.0, "host" : "h", "pid" : 1, "ppid" : 1, "counter": 1, '


def update(body: str) -> str:
    return HEAD + f'"type": "update", {NB}, "direction": "receive", "message": {body} }} }}'


def test_state_up_and_down():
    up = parse_message(HEAD + f'"type": "state", {NB}, "state": "up" }} }}')
    assert up == PeerState(IPv4Address("198.18.0.12"), IPv4Address("198.18.0.11"), "up")
    down = parse_message(HEAD + f'"type": "state", {NB}, "state": "down", '
                         '"reason": "peer reset" } }')
    assert down.state == "down" and down.reason == "peer reset"


def test_announce_withdraw_eor():
    msg = parse_message(update(
        '{ "update": { "attribute": { "origin": "igp", "local-preference": 100 }, '
        '"announce": { "ipv4 unicast": { "198.18.0.12": [ { "nlri": "10.244.1.0/26" }, '
        '{ "nlri": "10.244.7.9/32" } ] }, "ipv6 unicast": { "::1": [ { "nlri": "fd00::/64" } ] } },'
        ' "withdraw": { "ipv4 unicast": [ { "nlri": "10.244.2.0/26" } ] } } }'))
    assert msg == RouteUpdate(
        IPv4Address("198.18.0.12"),
        ((IPv4Network("10.244.1.0/26"), IPv4Address("198.18.0.12")),
         (IPv4Network("10.244.7.9/32"), IPv4Address("198.18.0.12"))),
        (IPv4Network("10.244.2.0/26"),), False, 1)
    eor = parse_message(update('{ "eor": { "afi" : "ipv4", "safi" : "unicast" } }'))
    assert eor.eor and not eor.announced


@pytest.mark.parametrize("line", [
    "{not json", "[1, 2]", '{"type": 3}', "{}",
    HEAD + f'"type": "state", {NB}, "state": "sideways" }} }}',
    HEAD + '"type": "state", "neighbor": { "address": { "peer": "x", "local": "y" } } }',
    update('{ "update": { "announce": { "ipv4 unicast": { "bogus": [ {"nlri": "10.0.0.0/8"} ] }'
           ' } } }'),
    update('{ "update": { "announce": { "ipv4 unicast": { "198.18.0.1": [ {"nlri": "10.0.0.1/8"}'
           ' ] } } } }'),
    update('{ "update": { "announce": { "ipv4 unicast": { "198.18.0.1": "10.0.0.0/8" } } } }'),
    update('{ "update": { "withdraw": { "ipv4 unicast": [ { "nlri": 7 } ] } } }'),
    update('{ "update": [] }'),
])
def test_malformed_lines_are_message_errors(line):
    with pytest.raises(MessageError):
        parse_message(line)


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_parse_never_raises_anything_else(data):
    with contextlib.suppress(MessageError):
        parse_message(data)


def test_text_acks_are_notices():
    assert parse_message("done\n") == Notice("ack", "done")
    assert parse_message("shutdown") == Notice("shutdown", "shutdown")


def test_speaker_counts_and_survives_bad_lines(tmp_path):
    got = []
    sp = Speaker(tmp_path, bind=IPv4Address("127.0.0.1"), on_message=got.append)
    for line in (b"garbage", b'{"type": "state"}', (HEAD + '"type": "keepalive" }').encode()):
        sp._dispatch(line)
    assert sp.malformed == 2 and got == [Notice("keepalive")]
    assert "malformed" in sp.last_error


def test_options_are_validated():
    cfg = parse_config({"VXLANMode": "CrossSubnet", "Peers": [{"PeerIP": "198.18.0.2"}]})
    assert cfg.encapsulation == "vxlan" and cfg.cross_subnet and cfg.peers[0].asn == 64512
    for bad, field in [({"VXLANMode": "always"}, "VXLANMode"), ({"ASNumber": 0}, "ASNumber"),
                       ({"IPIPMode": "Always", "VXLANMode": "Always"}, "IPIPMode"),
                       ({"Peers": [{"PeerIP": "nope"}]}, "Peers[0].PeerIP"),
                       ({"NodeToNodeMesh": "no"}, "NodeToNodeMesh"), ({"Foo": 1}, "Foo"),
                       ({"HoldTime": 2}, "HoldTime")]:
        with pytest.raises(ConfigError) as info:
            parse_config(bad)
        assert field in str(info.value) and info.value.fix


def test_exabgp_accepts_the_rendered_config(tmp_path):
    text = render_config(
        router_id=IPv4Address("198.18.0.11"), local_as=64512, api_socket=tmp_path / "api.sock",
        neighbors=[BgpNeighbor(IPv4Address("198.18.0.12"), 64512, "h2"),
                   BgpNeighbor(IPv4Address("198.18.0.2"), 65000, "bird; evil {")],
    )
    assert 'description "birdevil"' in text  # neighbour text cannot break out of the block
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    res = subprocess.run([sys.executable, "-m", "exabgp", "validate", str(conf)],
                         capture_output=True, text=True, timeout=60,
                         env=exabgp_env(IPv4Address("127.0.0.1")))
    assert res.returncode == 0, res.stdout + res.stderr
    with pytest.raises(ConfigError):
        render_config(router_id=IPv4Address("198.18.0.11"), local_as=0, neighbors=[],
                      api_socket=tmp_path / "x")


@pytest.mark.skipif(not bird_available(), reason="BIRD 2 (bird2) is not installed")
@pytest.mark.parametrize("rr,kernel", [(True, False), (False, True)])
def test_bird_accepts_the_rendered_config(tmp_path, rr, kernel):
    cfg = BirdConfig(router_id="198.18.0.2", pod_cidr="10.244.0.0/16", route_reflector=rr,
                     kernel_export=kernel)
    conf = tmp_path / "bird.conf"
    conf.write_text(render_bird_config(cfg, tmp_path / "bird.log"))
    res = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_bird_route_parsing():
    text = ("BIRD 2.0.12 ready.\nTable master4:\n"
            "10.244.1.0/26        unicast [node2 09:06:36.462] * (100) [i]\n"
            "\tvia 198.18.251.11 on br0\n"
            "10.244.9.0/26        unreachable [node1 09:06:14.761 from 198.18.251.13] * (100)"
            " [i]\n")
    routes = parse_routes(text)
    assert [(str(r.prefix), str(r.via), r.kind) for r in routes] == [
        ("10.244.1.0/26", "198.18.251.11", "unicast"),
        ("10.244.9.0/26", "198.18.251.13", "unreachable")]


def test_route_table_holds_stale_routes_then_sweeps():
    t = RouteTable()
    a, b = IPv4Address("198.18.0.12"), IPv4Address("198.18.0.13")
    p1, p2 = IPv4Network("10.244.1.0/26"), IPv4Network("10.244.2.0/26")
    assert t.apply(RouteUpdate(a, ((p1, a), (p2, a)))) == {p1, p2}
    t.session_down(a, hold=60)
    assert t.best(p1) == (a, a)  # held through the restart
    t.session_up(a)
    t.apply(RouteUpdate(a, ((p1, a),)))
    assert t.apply(RouteUpdate(a, eor=True)) == {p2}  # not re-sent: swept at End-of-RIB
    assert t.best(p2) is None and t.best(p1) == (a, a)
    t.apply(RouteUpdate(b, ((p1, b),)))
    t.session_down(a, hold=0)
    time.sleep(0.01)
    assert t.best(p1) == (b, b)  # fresh beats stale
    assert t.expire(sweep_after=5) == {p1}
    assert t.best(p1) == (b, b) and t.counts() == {a: (0, 0), b: (1, 0)}
    t.apply(RouteUpdate(a, ((p2, a),)))
    t.session_down(a, hold=0.2)
    time.sleep(0.1)
    t.session_down(a, hold=0.2)  # down again before the session came back: hold not extended
    time.sleep(0.15)
    assert t.expire(sweep_after=5) == {p2} and t.best(p2) is None


