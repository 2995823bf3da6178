"""fabric.cni.result: version shapes, prevResult validation, chaining."""

from __future__ import annotations

import copy

import pytest

from fabric.cni.errors import CNIError
from fabric.cni.result import chain, find_interface, interface_ips, normalize, to_version

NS = "/run/netns/nfcni-a"
OURS = {
    "interfaces": [
        {"name": "vx.a1b2c3"},
        {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": NS, "mtu": 1450},
    ],
    "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1", "mtu": 1450, "priority": 5}],
    "dns": {},
}


def test_1_1_keeps_everything() -> None:
    out = to_version(normalize(OURS), "1.1.0")
    assert out == {"cniVersion": "1.1.0", **OURS}
    assert list(out)[0] == "cniVersion"


def test_1_0_drops_1_1_fields() -> None:
    out = to_version(normalize(OURS), "1.0.0")
    assert out["interfaces"][1] == {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": NS}
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
    assert out["ips"] == OURS["ips"] and "version" not in out["ips"][0]


def test_0_4_adds_ip_version() -> None:
    res = copy.deepcopy(OURS)
    res["ips"].append({"address": "fd00::5/64", "interface": 1})
    out = to_version(normalize(res), "0.4.0")
    assert out["cniVersion"] == "0.4.0"
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["ips"][0] == {"version": "4", **OURS["ips"][0]}
    assert "mtu" not in out["interfaces"][1] and out["routes"][0] == {"dst": "0.0.0.0/0",
                                                                       "gw": "10.244.1.1"}


def test_0_4_prev_result_round_trips_to_1_x() -> None:
    prev04 = to_version(normalize(OURS), "0.4.0")
    internal = normalize(prev04)
    assert "version" not in internal["ips"][0] and "cniVersion" not in internal
    assert to_version(internal, "0.4.0") == prev04


def test_foreign_keys_pass_through() -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "tap0", "x-vendor": 1}],
            "ips": [], "custom": {"k": "v"}}
    out = to_version(normalize(prev), "1.0.0")
    assert out["custom"] == {"k": "v"} and out["interfaces"][0]["x-vendor"] == 1


@pytest.mark.parametrize("bad, field", [
    ("x", "prevResult"),
    ({"interfaces": {}}, "prevResult.interfaces"),
    ({"interfaces": [{"mac": "x"}]}, "prevResult.interfaces[0].name"),
    ({"interfaces": [{"name": "a", "sandbox": 3}]}, "prevResult.interfaces[0].sandbox"),
    ({"ips": [{"address": "10.0.0.1"}]}, "prevResult.ips[0].address"),
    ({"ips": [{"address": "banana/24"}]}, "prevResult.ips[0].address"),
    ({"ips": [{"address": "10.0.0.1/24", "gateway": "x"}]}, "prevResult.ips[0].gateway"),
    ({"ips": [{"address": "10.0.0.1/24", "interface": 0}]}, "prevResult.ips[0].interface"),
    ({"interfaces": [{"name": "a"}], "ips": [{"address": "10.0.0.1/24", "interface": True}]},
     "prevResult.ips[0].interface"),
    ({"routes": [{"gw": "10.0.0.1"}]}, "prevResult.routes[0].dst"),
    ({"dns": []}, "prevResult.dns"),
])
def test_malformed_prev_result_names_the_field(bad, field: str) -> None:
    with pytest.raises(CNIError) as info:
        normalize(bad)
    assert info.value.code == 7 and info.value.details.startswith(field + ":")


def test_chain_appends_and_shifts_interface_indexes() -> None:
    prev = normalize({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "br0"}, {"name": "net1", "sandbox": NS}],
        "ips": [{"address": "192.168.77.2/24", "interface": 1}],
        "routes": [{"dst": "192.168.0.0/16"}],
        "dns": {"nameservers": ["192.168.77.1"], "search": ["a.local"]},
    })
    ours = normalize({**OURS, "dns": {"nameservers": ["10.96.0.10"]}})
    out = chain(prev, ours)
    assert [i["name"] for i in out["interfaces"]] == ["br0", "net1", "vx.a1b2c3", "eth0"]
    assert [(ip["address"], ip["interface"]) for ip in out["ips"]] == [
        ("192.168.77.2/24", 1), ("10.244.1.5/24", 3)]
    assert out["interfaces"][out["ips"][1]["interface"]]["name"] == "eth0"
    assert [r["dst"] for r in out["routes"]] == ["192.168.0.0/16", "0.0.0.0/0"]
    assert out["dns"] == {"nameservers": ["10.96.0.10"], "search": ["a.local"]}
    assert OURS["ips"][0]["interface"] == 1  # inputs untouched
    assert chain(None, ours) is ours


def test_find_interface_and_ips() -> None:
    res = normalize(OURS)
    assert find_interface(res, "eth0", NS) == 1
    assert find_interface(res, "eth0", "/run/netns/other") is None
    assert find_interface(res, "eth0", "") == 1
    assert find_interface(res, "vx.a1b2c3", "") is None  # host side has no sandbox
    assert [ip["address"] for ip in interface_ips(res, 1)] == ["10.244.1.5/24"]
    assert interface_ips(res, 0) == []
