"""Weave backend options: defaults, validation, password files."""

from __future__ import annotations

import os

import pytest

from fabric.errors import ConfigError
from fabric.weave.options import WeaveOptions, psk_from_password, read_password_file


def test_defaults_are_weaves() -> None:
    o = WeaveOptions.parse({}, "weave.br")
    assert (o.mesh_port, o.data_port, o.fastdp_port) == (6783, 6783, 6784)
    assert o.bridge == "weave.br" and o.dns and o.dns_domain == "weave.local."
    assert o.password is None and o.dns_upstream is None and o.mac_expiry == 600


def test_peers_from_list_or_comma_string() -> None:
    o = WeaveOptions.parse({"Peers": "198.18.0.12, 198.18.0.13:7000"}, "b")
    assert o.targets() == ["198.18.0.12:6783", "198.18.0.13:7000"]
    o = WeaveOptions.parse({"Peers": ["h2"], "MeshPort": 7783}, "b")
    assert o.targets() == ["h2:7783"]


@pytest.mark.parametrize("cfg, field", [
    ({"MeshPort": 0}, "MeshPort"),
    ({"DataPort": "6783"}, "DataPort"),
    ({"FastdpPort": 6783}, "FastdpPort"),
    ({"Peers": [1, 2]}, "Peers"),
    ({"Peers": ["a:99999"]}, "Peers"),
    ({"DNSUpstream": ["not-an-ip"]}, "DNSUpstream"),
    ({"MACExpiry": -1}, "MACExpiry"),
    ({"HeartbeatInterval": True}, "HeartbeatInterval"),
    ({"Bridge": "x" * 16}, "Bridge"),
    ({"Bogus": 1}, "Bogus"),
])
def test_bad_values_name_the_field(cfg, field) -> None:
    with pytest.raises(ConfigError) as exc:
        WeaveOptions.parse(cfg, "b")
    assert exc.value.field == field


def test_no_password_on_the_command_line() -> None:
    with pytest.raises(ConfigError, match="PasswordFile"):
        WeaveOptions.parse({"Password": "secret"}, "b")


def test_dns_upstream_none_means_no_forwarding() -> None:
    assert WeaveOptions.parse({"DNSUpstream": "none"}, "b").dns_upstream == ()
    assert WeaveOptions.parse({"DNSUpstream": "192.0.2.53"}, "b").dns_upstream == ("192.0.2.53",)


def test_password_file_must_not_be_world_readable(tmp_path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o644)
    with pytest.raises(ConfigError, match="world-readable") as exc:
        read_password_file(pw)
    assert "chmod 600" in str(exc.value)
    os.chmod(pw, 0o600)
    assert read_password_file(pw) == b"s3cret"
    o = WeaveOptions.parse({"PasswordFile": str(pw)}, "b")
    assert o.password == b"s3cret" and "s3cret" not in repr(o)


def test_password_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        read_password_file(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    with pytest.raises(ConfigError, match="empty"):
        read_password_file(empty)


def test_sleeve_psk_depends_on_the_password() -> None:
    assert psk_from_password(None) == b""
    a, b = psk_from_password(b"one"), psk_from_password(b"two")
    assert len(a) == 32 and a != b and a == psk_from_password(b"one")
