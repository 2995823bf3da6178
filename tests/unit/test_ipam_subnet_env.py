"""flannel's subnet.env: exact content, atomic write, read back."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from fabric.errors import ConfigError
from fabric.ipam.subnet_env import (
    read_subnet_env,
    render_subnet_env,
    subnet_from_env,
    write_subnet_env,
)


def test_content_is_flannels(tmp_path) -> None:
    path = tmp_path / "run" / "subnet.env"
    write_subnet_env(
        path,
        network=IPv4Network("10.5.0.0/16"),
        subnet=IPv4Network("10.5.7.0/24"),
        mtu=1450,
        ipmasq=True,
    )
    assert path.read_text() == (
        "FLANNEL_NETWORK=10.5.0.0/16\n"
        "FLANNEL_SUBNET=10.5.7.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )
    env = read_subnet_env(path)
    assert env["FLANNEL_IPMASQ"] == "true"
    assert subnet_from_env(env) == IPv4Network("10.5.7.0/24")
    assert [p.name for p in path.parent.iterdir()] == ["subnet.env"]


def test_rewrite_replaces(tmp_path) -> None:
    path = tmp_path / "subnet.env"
    for subnet, masq in (("10.5.7.0/24", True), ("10.5.9.0/26", False)):
        write_subnet_env(path, network=IPv4Network("10.5.0.0/16"),
                         subnet=IPv4Network(subnet), mtu=1500, ipmasq=masq)  # fmt: skip
    env = read_subnet_env(path)
    assert env["FLANNEL_SUBNET"] == "10.5.9.1/26" and env["FLANNEL_IPMASQ"] == "false"


def test_missing_and_malformed(tmp_path) -> None:
    assert read_subnet_env(tmp_path / "none") == {}
    (tmp_path / "bad").write_text("junk\nFLANNEL_SUBNET=not-an-ip\nOTHER=1\n")
    env = read_subnet_env(tmp_path / "bad")
    assert env == {"FLANNEL_SUBNET": "not-an-ip"}
    assert subnet_from_env(env) is None


def test_subnet_outside_network_is_rejected() -> None:
    with pytest.raises(ConfigError):
        render_subnet_env(IPv4Network("10.5.0.0/16"), IPv4Network("10.6.0.0/24"), 1500, False)
