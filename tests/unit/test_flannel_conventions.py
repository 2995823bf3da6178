"""flannel's conventions: net-conf.json, type names in etcd records, flag names, subnet file."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from fabric.agent.config import AgentConfig, network_from_mapping
from fabric.agent.daemon import Agent
from fabric.agent.flannel import net_conf_to_network, read_net_conf
from fabric.cli import agent_config_from_args, build_parser
from fabric.errors import ConfigError
from fabric.ipam.flannel_names import canonical_backend, flannel_type
from fabric.ipam.netconfig import netconfig_from_spec, parse_netconfig
from fabric.ipam.subnet_env import read_subnet_env
from fabric_testplugins.fake import reset_fake_cluster


@pytest.mark.parametrize(("flannel", "ours"), [("udp", "flannel-udp"), ("vxlan", "vxlan"),
                                               ("host-gw", "hostgw"), ("HOST-GW", "hostgw")])
def test_type_names_map_both_ways(flannel: str, ours: str) -> None:
    assert canonical_backend(flannel) == ours
    assert flannel_type(ours) == flannel.lower()
    assert flannel_type("calico-bgp") == "calico-bgp"  # not a flannel backend: unchanged


@pytest.mark.parametrize(("ours", "written"), [("hostgw", "host-gw"), ("flannel-udp", "udp"),
                                               ("vxlan", "vxlan")])
def test_etcd_network_config_carries_flannels_type(ours: str, written: str) -> None:
    spec = network_from_mapping({"backend": ours, "network": "10.5.0.0/16"})
    conf = json.loads(netconfig_from_spec(spec).to_json())
    assert conf["Backend"]["Type"] == written
    assert parse_netconfig(json.dumps(conf)).backend_type == written  # flannel reads it back


def test_flannel_type_names_in_agent_config() -> None:
    assert network_from_mapping({"backend": "udp", "network": "10.5.0.0/16"}).backend == \
        "flannel-udp"
    spec = network_from_mapping({"backend": {"Type": "host-gw"}, "network": "10.5.0.0/16"})
    assert spec.backend == "hostgw"


def test_net_conf_json_as_kube_flannel_ships_it(tmp_path: Path) -> None:
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps({"Network": "10.244.0.0/16",
                                "Backend": {"Type": "vxlan", "VNI": 4, "Port": 4789}}))
    net = read_net_conf(path)
    assert net == {"network": "10.244.0.0/16", "backend": "vxlan",
                   "backendConfig": {"VNI": 4, "Port": 4789}}
    args = build_parser().parse_args(["up", "--net-conf", str(path), "--ip-masq",
                                      "--etcd-endpoints", "http://a:2379,http://b:2379",
                                      "--subnet-file"])
    cfg = agent_config_from_args(args)
    (spec,) = cfg.networks
    assert spec.backend == "vxlan" and spec.cidr == IPv4Network("10.244.0.0/16")
    assert spec.ipmasq and spec.backend_config["VNI"] == 4
    assert cfg.etcd == "http://a:2379,http://b:2379"
    assert cfg.subnet_file == "/run/flannel/subnet.env"  # flannel's default path


def test_net_conf_defaults_and_refusals(tmp_path: Path) -> None:
    net = net_conf_to_network({"network": "10.5.0.0/16", "subnetlen": 26,
                               "SubnetMin": "10.5.1.0", "SubnetMax": "10.5.20.0"})
    assert net["backend"] == "flannel-udp"  # flannel's default backend is udp
    spec = network_from_mapping(net)
    assert spec.subnet_len == 26 and spec.subnet_min == IPv4Network("10.5.1.0/26")
    for bad, match in (({"Backend": {"Type": "vxlan"}}, "Network is required"),
                       ({"Network": "10.5.0.0/16", "Bogus": 1}, "unknown key"),
                       ({"Network": "10.5.0.0/16", "EnableIPv6": True}, "IPv6"),
                       ([], "JSON object")):
        with pytest.raises(ConfigError, match=match) as exc:
            net_conf_to_network(bad)
        assert exc.value.fix
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_net_conf(tmp_path / "bad.json")
    args = build_parser().parse_args(["up", "--net-conf", str(tmp_path / "bad.json"),
                                      "--backend", "vxlan"])
    with pytest.raises(ConfigError, match="already gives"):
        agent_config_from_args(args)


def test_agent_writes_the_subnet_file(tmp_path: Path) -> None:
    reset_fake_cluster()  # the fake IPAM's chunks are process-wide
    target = tmp_path / "run-flannel" / "subnet.env"
    cfg = AgentConfig.from_json({"node": {"name": "n1", "iface": "lo"},
                                 "stateDir": str(tmp_path / "state"),
                                 "subnetFile": str(target),
                                 "networks": [{"backend": "fake", "network": "10.60.0.0/16",
                                               "name": "fk"}]})  # no ipMasq: root netns
    agent = Agent(cfg)
    import threading

    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not target.exists():
            assert time.monotonic() < deadline, "no subnet file"
            time.sleep(0.05)
        env = read_subnet_env(target)
        assert env["FLANNEL_NETWORK"] == "10.60.0.0/16" and env["FLANNEL_IPMASQ"] == "false"
        chunk = agent.networks["fk"].ipam.chunks()[0]
        assert env["FLANNEL_SUBNET"] == f"{chunk.network_address + 1}/{chunk.prefixlen}"
    finally:
        agent.request_stop()
        thread.join(10)
        reset_fake_cluster()
