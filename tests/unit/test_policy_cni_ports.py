"""Named container ports declared through the CNI config (``args.cni.ports``) become the
port labels the policy engine resolves named ports with."""

from __future__ import annotations

import pytest

from fabric.cni import errors as codes
from fabric.cni.errors import CNIError
from fabric.cni.spec import parse_netconf
from fabric.policy.model import PORT_LABEL_PREFIX, declared_ports


def conf(cni_args: dict) -> dict:
    return {"cniVersion": "1.0.0", "name": "n", "type": "fabric-cni", "args": {"cni": cni_args}}


def test_mapping_and_pod_spec_list_become_port_labels() -> None:
    nc = parse_netconf(conf({"labels": {"app": "db"}, "ports": {"pg": 5432, "dns": "53/UDP"}}),
                       "ADD", {})
    assert nc.labels == {"app": "db", f"{PORT_LABEL_PREFIX}pg": "5432",
                         f"{PORT_LABEL_PREFIX}dns": "53-UDP"}
    assert declared_ports(nc.labels) == {"pg": ("TCP", 5432), "dns": ("UDP", 53)}
    listed = parse_netconf(conf({"ports": [{"name": "http", "containerPort": 8080},
                                           {"name": "q", "containerPort": 9, "protocol": "SCTP"}]}),
                           "ADD", {})
    assert declared_ports(listed.labels) == {"http": ("TCP", 8080), "q": ("SCTP", 9)}


@pytest.mark.parametrize("ports", [{"http": "x"}, {"http": True}, [{"containerPort": 80}],
                                   "http=80", [80]])
def test_bad_ports_are_a_config_error(ports) -> None:
    with pytest.raises(CNIError) as err:
        parse_netconf(conf({"ports": ports}), "ADD", {})
    assert err.value.code == codes.INVALID_NETWORK_CONFIG and "args.cni.ports" in str(err.value)
