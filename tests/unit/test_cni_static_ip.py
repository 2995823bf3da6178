"""Static addresses, the netns descriptor and version echo through the real agent (fake
backend and IPAM: no root). Issue 16: static IP requests were silently ignored (another
address, exit 0); errors said cniVersion 1.1.0 for a 1.0.0 config; a CNI_NETNS that is
not a network namespace reached the agent."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from fabric.api import Handle
from fabric.errors import ConfigError, IPAMError
from fabric.ipam.local import LocalAllocator
from tests.unit.agent_util import RunningAgent, cni, netconf, one_net

FAKE_CHUNK = "10.50.0.0/24"  # a chunk for the LocalAllocator test


def _ip(out: dict) -> str:
    return str(IPv4Interface(out["ips"][0]["address"]).ip)


@pytest.mark.parametrize("how", ["CNI_ARGS", "args.cni.ips", "runtimeConfig.ips"])
def test_static_ip_is_honoured(tmp_path: Path, how: str) -> None:
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        conf, env = netconf(ra.socket), {}
        if how == "CNI_ARGS":
            env["CNI_ARGS"] = "IgnoreUnknown=1;IP=10.50.1.77"
        elif how == "args.cni.ips":
            conf["args"] = {"cni": {"ips": ["10.50.1.77"]}}
        else:
            conf["runtimeConfig"] = {"ips": ["10.50.1.77/24"]}
        rc, out = cni("ADD", conf, cid="s1", **env)
        assert rc == 0, out
        assert _ip(out) == "10.50.1.77"
        # the same ADD again is idempotent; another container cannot have the address
        assert _ip(cni("ADD", conf, cid="s1", **env)[1]) == "10.50.1.77"
        rc, out = cni("ADD", conf, cid="s2", **env)
        assert rc == 1 and out["code"] == 103 and "in use by s1/eth0" in out["details"], out
        # a plain ADD never gets it either
        assert _ip(cni("ADD", netconf(ra.socket), cid="s3")[1]) != "10.50.1.77"


@pytest.mark.parametrize("ip, needle", [
    ("10.99.0.5", "outside this node's chunks"),
    ("10.50.1.1", "gateway"),  # the bridge's address
    ("10.50.1.255", "broadcast"),
    ("fd00::5", "IPv4"),
    ("10.50.1.5,10.50.1.6", "one IPv4 address"),
])
def test_static_ip_refused_with_code_7(tmp_path: Path, ip: str, needle: str) -> None:
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        rc, out = cni("ADD", netconf(ra.socket), CNI_ARGS=f"IP={ip}")
        assert rc == 1 and out["code"] == 7, out
        assert needle in out["details"] and out["msg"].endswith(": ips"), out
        workloads = tmp_path / "st/networks/fk/workloads.json"
        assert not workloads.exists() or json.loads(workloads.read_text()) == {}


def test_disagreeing_static_ip_sources_are_refused(tmp_path: Path) -> None:
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        conf = netconf(ra.socket, args={"cni": {"ips": ["10.50.1.8"]}})
        rc, out = cni("ADD", conf, CNI_ARGS="IP=10.50.1.9")
        assert rc == 1 and out["code"] == 7 and "differs" in out["details"], out


def test_result_names_the_runtime_path_not_the_agent_descriptor(tmp_path: Path) -> None:
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        rc, out = cni("ADD", netconf(ra.socket))
        assert rc == 0
        assert out["interfaces"][-1]["sandbox"] == "/proc/self/ns/net"
        rec = json.loads((tmp_path / "st/networks/fk/workloads.json").read_text())
        assert rec["c1/eth0"]["netns"] == "/proc/self/ns/net"


def test_netns_that_is_not_a_network_namespace_is_code_4(tmp_path: Path) -> None:
    not_ns = tmp_path / "plain-file"
    not_ns.write_text("")
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        for path in (str(not_ns), "/proc/self/ns/uts"):
            rc, out = cni("ADD", netconf(ra.socket, "1.0.0"), CNI_NETNS=path)
            assert rc == 1 and out["code"] == 4, out
            assert path in out["details"] and "not a network namespace" in out["details"]
            assert out["cniVersion"] == "1.0.0"
        # DEL of such a path still succeeds from the agent's record
        assert cni("DEL", netconf(ra.socket), CNI_NETNS=str(not_ns)) == (0, None)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_errors_echo_the_config_version(tmp_path: Path, version: str) -> None:
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        conf = netconf(ra.socket, version)
        bad_env = cni("ADD", conf, CNI_NETNS=str(tmp_path / "missing"))[1]
        bad_id = cni("ADD", conf, cid="-bad")[1]
        bad_ip = cni("ADD", conf, CNI_ARGS="IP=10.99.0.1")[1]
        for out in (bad_env, bad_id, bad_ip):
            assert out["cniVersion"] == version, out


# -- the allocator's contract (fabric.api.IPAM.allocate) --

def test_local_allocator_requested_address(tmp_path: Path) -> None:
    chunk = IPv4Network(FAKE_CHUNK)
    alloc = LocalAllocator(tmp_path / "a.json", [chunk])
    h1, h2 = Handle("c1", "eth0"), Handle("c2", "eth0")
    assert alloc.allocate(h1, IPv4Address("10.50.0.9")).ip == IPv4Address("10.50.0.9")
    assert alloc.allocate(h1).ip == IPv4Address("10.50.0.9")  # idempotent
    with pytest.raises(IPAMError, match="already holds"):
        alloc.allocate(h1, IPv4Address("10.50.0.10"))
    with pytest.raises(IPAMError, match="in use"):
        alloc.allocate(h2, IPv4Address("10.50.0.9"))
    for bad in ("10.50.0.0", "10.50.0.1", "10.50.0.255", "10.51.0.3"):
        with pytest.raises(ConfigError) as info:
            alloc.allocate(h2, IPv4Address(bad))
        assert info.value.field == "ips"
    assert alloc.allocate(h2).ip == IPv4Address("10.50.0.2")  # dynamic ones go around it
    again = LocalAllocator(tmp_path / "a.json", [chunk])  # persisted
    assert again.allocations()[h1].ip == IPv4Address("10.50.0.9")


def test_readme_example_config_as_libcni_derives_it(tmp_path: Path) -> None:
    """The README's example, the way libcni 1.1 (Debian 12) turns a conflist into the
    plugin's stdin: name and cniVersion copied in, capabilities as runtimeConfig."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index('{"cniVersion": "1.0.0", "name": "pods",')
    example = json.loads(readme[start:readme.index("]}", start) + 2])
    assert example["cniVersion"] == "1.0.0"  # what Debian 12's runtimes read
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        plugin = dict(example["plugins"][0])
        assert plugin.pop("capabilities") == {"ips": True}
        conf = {**plugin, "name": example["name"], "cniVersion": example["cniVersion"],
                "network": "fk", "agentSocket": ra.socket,
                "runtimeConfig": {"ips": ["10.50.1.42/24"]}}
        rc, out = cni("ADD", conf)
        assert rc == 0 and out["cniVersion"] == "1.0.0" and _ip(out) == "10.50.1.42", out


def test_agent_checks_a_path_sent_without_descriptor(tmp_path: Path) -> None:
    """A client that sends only the path (no descriptor): the agent checks what it sees
    there, as the runtime-in-another-mount-namespace case shows a plain file to it."""
    from fabric.control import call

    plain = tmp_path / "bind-target"
    plain.write_text("")
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        req = {"op": "cni.add", "container_id": "c9", "ifname": "eth0", "netns": str(plain)}
        with pytest.raises(ConfigError) as info:
            call(ra.socket, req)
        assert info.value.field == "netns" and "as the agent sees it" in info.value.message
        rc, out = cni("ADD", netconf(ra.socket), cid="c9")  # fabric-cni passes a descriptor
        assert rc == 0, out
