"""fabric.api.check_options (fabric/options.py) and its use by every bridged/routed backend."""

from __future__ import annotations

import pytest
from fabric_calico_bgp.config import parse_config

from fabric.api import check_options
from fabric.errors import ConfigError


def test_known_options_pass_through() -> None:
    assert check_options({"Type": "vxlan", "VNI": 2}, {"VNI", "Port"}, "vxlan") == {
        "Type": "vxlan", "VNI": 2}


def test_unknown_option_names_field_and_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"vxlan backend: unknown option\(s\) VNi") as err:
        check_options({"Type": "vxlan", "VNi": 2}, {"Type", "VNI", "Port"}, "vxlan")
    assert err.value.field == "backendConfig.VNi"
    assert err.value.fix == "valid: Port, VNI"


def test_no_options_and_not_a_mapping() -> None:
    with pytest.raises(ConfigError) as err:
        check_options({"Type": "x", "A": 1}, set(), "x")
    assert "no options besides Type" in (err.value.fix or "")
    with pytest.raises(ConfigError) as err:
        check_options(["VNI"], {"VNI"}, "x")
    assert err.value.field == "backendConfig"


def test_calico_bgp_uses_it() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"Type": "t", "Bogus": 1})
    assert err.value.field == "backendConfig.Bogus" and (err.value.fix or "").startswith("valid: ")
