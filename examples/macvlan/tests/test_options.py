"""The backend's config block and its contract values; no root, no kernel."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from fabric_example_macvlan import MacvlanBackend
from fabric_example_macvlan.options import MacvlanOptions

from fabric.api import Backend, NetworkContext, NetworkSpec, Node
from fabric.errors import ConfigError


def _ctx(tmp_path: Path, **config: object) -> NetworkContext:
    spec = NetworkSpec("mv", IPv4Network("10.70.0.0/16"), "macvlan", backend_config=config)
    node = Node("n1", IPv4Address("198.18.0.10"), "eth0", 1500)
    return NetworkContext(spec, node, tmp_path)


def test_defaults_and_contract(tmp_path: Path) -> None:
    b = MacvlanBackend(_ctx(tmp_path))
    assert isinstance(b, Backend)
    assert (b.name, b.default_ipam, b.mtu) == ("macvlan", "subnet", 1500)
    assert b.capabilities.needs_l2
    assert b.prepare() == {"Mode": "bridge"}


def test_vepa_mode(tmp_path: Path) -> None:
    assert MacvlanBackend(_ctx(tmp_path, Type="macvlan", Mode="vepa")).options.mode == "vepa"


@pytest.mark.parametrize("config, field", [({"Mode": "private"}, "backendConfig.Mode"),
                                           ({"Mode": 3}, "backendConfig.Mode"),
                                           ({"Parent": "eth1"}, "backendConfig.Parent")])
def test_bad_options_name_the_field_and_the_fix(config: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        MacvlanOptions.parse(config)
    assert err.value.field == field and err.value.fix
