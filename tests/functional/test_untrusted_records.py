"""Datastore records are untrusted (issue 16), below the agent: the subnet IPAM against a real
etcd (forged leases refused and reported, garbage over the own lease re-asserted, garbage
without a TTL reclaimed), and the route helpers in a real namespace (never replace or
delete a route the fabric did not install)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from ipaddress import IPv4Address, IPv4Network

import pytest

from fabric.api import Handle, NetworkContext, NetworkSpec, Node
from fabric.errors import ConfigError
from fabric.ipam.subnet import SubnetLeaseIPAM
from tests.functional.netns_util import add_ns, namespaces, needs_root, sh
from tests.util import wait_for

PREFIX = "/netfabric/u"
CIDR = IPv4Network("10.50.0.0/16")


@pytest.fixture
def make(store, tmp_path, stop_later):
    def factory(n: int, cidr: str = "10.50.0.0/16", ttl: int = 30) -> SubnetLeaseIPAM:
        spec = NetworkSpec(name="u", cidr=IPv4Network(cidr), backend="vxlan", ipam="subnet",
                           ipam_config={"leaseTTL": ttl}, etcd_prefix=PREFIX)
        node = Node(f"n{n}", IPv4Address(f"198.18.0.{10 + n}"), "eth0", 1500)
        return stop_later(SubnetLeaseIPAM(NetworkContext(spec, node, tmp_path / f"n{n}", store)))

    return factory


def lease(ip: str, **data) -> str:
    return json.dumps({"PublicIP": ip, "BackendType": "vxlan", "BackendData": data})


FORGED = {
    "0.0.0.0-0": lease("198.18.0.20"),
    "198.18.0.0-24": lease("198.18.0.20"),
    "10.99.0.0-24": lease("198.18.0.20"),
    "10.50.0.0-16": lease("198.18.0.20"),
    "10.50.7.0-25": lease("198.18.0.20"),
    "10.50.8.0-24": lease("10.50.1.1"),
    "10.50.9.0-24": lease("255.255.255.255"),
    "10.50.10.0-24": lease("198.18.0.20", VtepMAC="01:00:5e:00:00:01"),
    "10.50.11.0-24": lease("198.18.0.20", VNI="one"),
    "not-a-subnet": lease("198.18.0.20"),
}


def test_forged_leases_are_refused_reported_once_and_never_peers(make, store, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="fabric.ipam.subnet")
    a = make(1)
    a.start({})
    events = []
    a.subscribe(events.extend)
    for key, value in FORGED.items():
        store.put(f"{PREFIX}/subnets/{key}", value)
    store.put(f"{PREFIX}/subnets/10.50.12.0-24", lease("198.18.0.21", VtepMAC="0a:00:00:00:00:01"))
    assert wait_for(lambda: any(str(e.peer.public_ip) == "198.18.0.21" for e in events), 5)
    peers = {s for e in events for s in e.peer.subnets}
    assert peers == {IPv4Network("10.50.12.0/24")}  # the one valid lease only
    refused = {r["key"].rsplit("/", 1)[-1]: r["reason"] for r in a.status()["refused"]}
    assert set(refused) == set(FORGED)
    assert "outside the network" in refused["0.0.0.0-0"]
    assert "outside the network" in refused["198.18.0.0-24"]
    assert "whole network" in refused["10.50.0.0-16"]
    assert "not a /24" in refused["10.50.7.0-25"]
    assert "inside the pod network" in refused["10.50.8.0-24"]
    assert "not a unicast" in refused["10.50.9.0-24"]
    assert "multicast" in refused["10.50.10.0-24"]
    # once per key and content: rewriting the same garbage logs nothing new
    n = caplog.text.count("refused lease")
    assert n == len(FORGED)
    store.put(f"{PREFIX}/subnets/0.0.0.0-0", FORGED["0.0.0.0-0"])
    store.put(f"{PREFIX}/subnets/10.50.12.0-24", lease("198.18.0.21", VtepMAC="0a:00:00:00:00:02"))
    assert wait_for(lambda: len(events) >= 2, 5)
    assert caplog.text.count("refused lease") == n
    for key in FORGED:
        store.delete(f"{PREFIX}/subnets/{key}")
    assert wait_for(lambda: a.status()["refused"] == [], 5)
    assert all(e.kind == "added" for e in events)  # nothing refused was ever "removed"


def test_a_valid_peer_overwritten_with_an_invalid_record_stays(make, store) -> None:
    a = make(1)
    a.start({})
    events = []
    a.subscribe(events.extend)
    store.put(f"{PREFIX}/subnets/10.50.12.0-24", lease("198.18.0.21"))
    assert wait_for(lambda: len(events) == 1, 5)
    store.put(f"{PREFIX}/subnets/10.50.12.0-24", lease("127.0.0.1"))
    assert wait_for(lambda: a.status()["refused"], 5)
    assert len(events) == 1 and a.status()["peers"][0]["public_ip"] == "198.18.0.21"


def test_garbage_over_own_lease_is_reasserted_not_moved(make, store) -> None:
    a = make(1, ttl=3)  # renews every second
    (subnet,) = a.start({"VtepMAC": "0a:00:00:00:00:07"})
    first = a.allocate(Handle("c1", "eth0"))
    key = a.status()["key"]
    good = store.get(key).value
    for garbage in ("{not json", lease("198.18.0.11", VtepMAC="zz"), lease("0.0.0.0")):
        store.put(key, garbage)  # a plain put also drops the key's etcd lease (TTL)
        assert wait_for(lambda: (kv := store.get(key)) is not None and kv.value == good, 10)
        assert a.chunks() == (subnet,)
    assert store.get(key).lease  # our TTL again: this key cannot outlive us
    second = a.allocate(Handle("c2", "eth0"))
    assert first.chunk == second.chunk == subnet  # old and new pods share one gateway


def test_garbage_without_ttl_does_not_block_a_subnet_forever(make, store) -> None:
    # a /22 with SubnetLen 24 has 3 usable subnets; garbage (no TTL) holds all of them
    for third in (1, 2, 3):
        store.put(f"{PREFIX}/subnets/10.50.{third}.0-24", "{garbage")
    a = make(1, cidr="10.50.0.0/22")
    (subnet,) = a.start({})
    assert subnet in {IPv4Network(f"10.50.{t}.0/24") for t in (1, 2, 3)}
    kv = store.get(f"{PREFIX}/subnets/{subnet.network_address}-24")
    assert json.loads(kv.value)["PublicIP"] == "198.18.0.11" and kv.lease


def test_a_forged_network_config_is_refused(make, store) -> None:
    store.put(f"{PREFIX}/config", json.dumps({"Network": "0.0.0.0/0", "SubnetLen": 24}))
    with pytest.raises(ConfigError, match="outside this node's network"):
        make(1).start({})


# -- the kernel boundary: routes.py in a real namespace --
_PROBE = textwrap.dedent("""
    import json, sys
    from ipaddress import IPv4Address as A, IPv4Network as N
    from fabric.errors import BackendError
    from fabric.net.routes import delete_route, replace_route, replace_blackhole
    out = {}
    def attempt(name, fn):
        try:
            fn(); out[name] = "ok"
        except BackendError as exc:
            out[name] = "refused: " + str(exc)
    attempt("hijack_connected", lambda: replace_route(N("198.18.0.0/24"), gateway=A("198.18.0.12")))
    attempt("hijack_default", lambda: replace_route(N("0.0.0.0/0"), gateway=A("198.18.0.12")))
    attempt("outside", lambda: replace_route(N("10.99.0.0/24"), gateway=A("198.18.0.12"),
                                             within=N("10.244.0.0/16")))
    attempt("blackhole_outside", lambda: replace_blackhole(N("0.0.0.0/0"),
                                                         within=N("10.244.0.0/16")))
    attempt("ours", lambda: replace_route(N("10.244.2.0/24"), gateway=A("198.18.0.12"),
                                          within=N("10.244.0.0/16")))
    attempt("ours_again", lambda: replace_route(N("10.244.2.0/24"), gateway=A("198.18.0.13"),
                                                within=N("10.244.0.0/16")))
    out["del_default"] = delete_route(N("0.0.0.0/0"))
    out["del_connected"] = delete_route(N("198.18.0.0/24"))
    out["del_static"] = delete_route(N("10.244.3.0/24"))
    out["del_ours_wrong_gw"] = delete_route(N("10.244.2.0/24"), gateway=A("198.18.0.12"))
    out["del_ours"] = delete_route(N("10.244.2.0/24"), gateway=A("198.18.0.13"), dev="eth0")
    print(json.dumps(out))
""")


@pytest.mark.root
@needs_root
def test_routes_never_replace_or_delete_what_the_fabric_did_not_install() -> None:
    with namespaces("nfur") as tag:
        ns = f"{tag}h"
        add_ns(ns)
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0", ns=ns)
        sh("ip", "link", "set", "x0", "up", ns=ns)
        sh("ip", "addr", "add", "198.18.0.11/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "route", "add", "default", "via", "198.18.0.1", ns=ns)
        sh("ip", "route", "add", "10.244.3.0/24", "via", "198.18.0.1", ns=ns)  # an admin's
        before = sh("ip", "route", ns=ns).stdout
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _PROBE],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["hijack_connected"].startswith("refused") and "did not install" in (
            out["hijack_connected"])
        assert out["hijack_default"].startswith("refused")
        assert "outside the pod network" in out["outside"]
        assert "outside the pod network" in out["blackhole_outside"]
        assert out["ours"] == out["ours_again"] == "ok"  # our own route is replaced as before
        assert out["del_default"] is out["del_connected"] is out["del_static"] is False
        assert out["del_ours_wrong_gw"] is False and out["del_ours"] is True
        assert sh("ip", "route", ns=ns).stdout == before
