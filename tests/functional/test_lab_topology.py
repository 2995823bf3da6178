"""The lab's topology description: validation and round trip (no root needed)."""

from __future__ import annotations

import pytest

from fabric.errors import ConfigError
from fabric.lab import Topology
from fabric.lab.topology import host_spec


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "bad-name"}, "lab name"),
    ({"name": "abcdefghi"}, "lab name"),
    ({"hosts": 0}, "hosts must be"),
    ({"hosts": 2, "segments": 3}, "segments"),
    ({"cidr": "198.18.5.0/24"}, "outside 198.18.0.0/15"),
    ({"cidr": "8.8.0.0/16"}, "private"),
    ({"backends": ()}, "at least one backend"),
])
def test_topology_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"name": "ok1", "backends": ("vxlan",), **kwargs}
    with pytest.raises(ConfigError, match=match):
        Topology(**args)


def test_topology_round_trips_and_shifts_extra_networks() -> None:
    t = Topology("ok1", ("vxlan", "hostgw"), hosts=3, cidr="10.50.0.0/16",
                 agent_args=("--backend-opt", "x={node}"))
    assert Topology.from_json(t.to_json()) == t
    assert [str(t.network_cidr(i)) for i in range(2)] == ["10.50.0.0/16", "10.51.0.0/16"]
    assert t.network_names() == ["vxlan", "hostgw1"]


def test_hosts_alternate_over_segments_with_router_gateways() -> None:
    specs = [host_spec("ok1", i, 3) for i in (1, 2, 3, 4)]
    assert [(h.segment, str(h.address), str(h.gateway)) for h in specs] == [
        (0, "198.18.0.11/24", "198.18.0.1"), (1, "198.18.1.12/24", "198.18.1.1"),
        (2, "198.18.2.13/24", "198.18.2.1"), (0, "198.18.0.14/24", "198.18.0.1")]
    assert specs[0].ns == "nfl-ok1-h1"
    with pytest.raises(ConfigError, match="host index"):
        host_spec("ok1", 0, 1)


def test_public_surface_is_declared() -> None:
    import importlib

    import fabric.lab

    for name in fabric.lab.__all__:
        assert getattr(fabric.lab, name) is not None
    for mod in ("topology", "lab", "netns", "procs", "cleanup", "results", "ops", "agents",
                "underlay", "cli", "blocks", "control", "traffic"):
        m = importlib.import_module(f"fabric.lab.{mod}")
        assert m.__all__ and all(hasattr(m, n) for n in m.__all__), mod
    with pytest.raises(AttributeError):
        fabric.lab.Nope  # noqa: B018


def test_etcd_started_when_an_ipam_needs_a_datastore() -> None:
    assert Topology("ok1", "vxlan").needs_etcd()  # subnet leases live in etcd
    assert not Topology("ok1", "vxlan", etcd=False).needs_etcd()
    assert Topology("ok1", "nosuchbackend").needs_etcd()  # its agent will say what is wrong
    assert Topology.from_json(Topology("ok1", "vxlan").to_json()).etcd is None


def test_etcd_not_started_when_every_backend_uses_the_ring(monkeypatch) -> None:
    import fabric.plugins

    class Gossip:
        default_ipam = "ring"

    monkeypatch.setattr(fabric.plugins, "load_plugin", lambda kind, name: Gossip)
    assert not Topology("ok1", ("weave", "weave")).needs_etcd()
    assert Topology("ok1", "weave", etcd=True).needs_etcd()


def test_agent_args_and_backend_opts_expand_peers_per_host() -> None:
    from ipaddress import IPv4Address, IPv4Interface

    from fabric.lab.agents import agent_argv
    from fabric.lab.results import HostInfo

    topo = Topology("ok1", "vxlan", hosts=3, agent_args=("--peers={peers}", "--x={node}/{ip}"),
                    backend_opts={"vxlan": {"Seeds": "{peers}", "Raw": {"a": "{lab}"}, "N": 2}})
    host = HostInfo("h2", 2, "nfl-ok1-h2", 0, IPv4Interface("198.18.0.12/24"), "/tmp/nfl-ok1-h2",
                    "/tmp/nfl-ok1-h2/agent.sock")
    argv = agent_argv(topo, host, None, [IPv4Address("198.18.0.11"), IPv4Address("198.18.0.13")])
    assert argv[-2:] == ["--peers=198.18.0.11,198.18.0.13", "--x=h2/198.18.0.12"]
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "--backend-opt"]
    assert opts == ['Seeds="198.18.0.11,198.18.0.13"', 'Raw={"a": "ok1"}', "N=2"]
    assert agent_argv(topo, host, None)[-2] == "--peers="  # a lone host: no peers
