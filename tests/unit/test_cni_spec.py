"""fabric.cni.spec: environment per verb, versions, network config fields."""

from __future__ import annotations

import pytest

from fabric.cni import errors as codes
from fabric.cni.errors import CNIError
from fabric.cni.spec import (
    DEFAULT_SOCKET,
    SUPPORTED_VERSIONS,
    check_version,
    parse_cni_args,
    parse_netconf,
    read_invocation,
    valid_container_id,
    valid_ifname,
)

NETNS = "/proc/self/ns/net"
FULL_ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0",
            "CNI_PATH": "/usr/lib/cni"}


def code_of(fn, *args) -> CNIError:
    with pytest.raises(CNIError) as info:
        fn(*args)
    return info.value


# -- environment --

@pytest.mark.parametrize("verb, required", [
    ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
    ("CHECK", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
    ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME"]),
    ("GC", ["CNI_PATH"]),
    ("STATUS", []),
    ("VERSION", []),
])
def test_required_env_per_verb(verb: str, required: list[str]) -> None:
    inv = read_invocation({"CNI_COMMAND": verb, **FULL_ENV})
    assert inv.verb == verb
    for name in FULL_ENV:
        env = {"CNI_COMMAND": verb, **FULL_ENV}
        del env[name]
        if name in required:
            err = code_of(read_invocation, env)
            assert err.code == codes.INVALID_ENVIRONMENT and name in err.msg
            assert name in err.details
        else:
            read_invocation(env)  # optional for this verb
    bare = {"CNI_COMMAND": verb}
    if required:
        err = code_of(read_invocation, bare)
        assert all(n in err.msg for n in required)
    else:
        read_invocation(bare)


def test_empty_value_counts_as_missing() -> None:
    err = code_of(read_invocation, {"CNI_COMMAND": "DEL", **FULL_ENV, "CNI_IFNAME": ""})
    assert err.code == 4 and "CNI_IFNAME" in err.msg


@pytest.mark.parametrize("env, needle", [
    ({}, "CNI_COMMAND"),
    ({"CNI_COMMAND": "add"}, "CNI_COMMAND"),
    ({"CNI_COMMAND": "FROB"}, "CNI_COMMAND"),
    ({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_CONTAINERID": "-abc"}, "CNI_CONTAINERID"),
    ({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_CONTAINERID": "a b"}, "CNI_CONTAINERID"),
    ({"CNI_COMMAND": "DEL", **FULL_ENV, "CNI_IFNAME": "a" * 16}, "CNI_IFNAME"),
    ({"CNI_COMMAND": "CHECK", **FULL_ENV, "CNI_IFNAME": "et/h0"}, "CNI_IFNAME"),
    ({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_NETNS": "relative/ns"}, "CNI_NETNS"),
    ({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_NETNS": "/nonexistent/nfcni-ns"}, "CNI_NETNS"),
    ({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_ARGS": "K8S_POD_NAME"}, "CNI_ARGS"),
])
def test_invalid_env_is_code_4_naming_the_variable(env: dict, needle: str) -> None:
    err = code_of(read_invocation, env)
    assert err.code == codes.INVALID_ENVIRONMENT
    assert needle in err.msg + err.details


def test_del_does_not_need_an_existing_netns() -> None:
    inv = read_invocation({"CNI_COMMAND": "DEL", **FULL_ENV, "CNI_NETNS": "/gone/nfcni-x"})
    assert inv.netns == "/gone/nfcni-x"


def test_container_id_and_ifname_rules() -> None:
    assert valid_container_id("a") and valid_container_id("0ab_c.d-e")
    assert not valid_container_id("") and not valid_container_id("_a")
    assert not valid_container_id("a/b") and not valid_container_id("é1")
    assert valid_ifname("eth0") and valid_ifname("a" * 15)
    for bad in ("", ".", "..", "a" * 16, "a:b", "a b", "a\tb", "a/b"):
        assert not valid_ifname(bad), bad


def test_cni_args() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=prod;") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "prod"}
    assert parse_cni_args("A=b=c") == {"A": "b=c"}
    assert code_of(parse_cni_args, "=x").code == 4


# -- versions --

@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_supported_versions_for_attachment_verbs(version: str) -> None:
    for verb in ("ADD", "DEL", "CHECK"):
        assert check_version({"cniVersion": version}, verb) == version


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_gc_and_status_need_1_1(version: str) -> None:
    for verb in ("GC", "STATUS"):
        err = code_of(check_version, {"cniVersion": version}, verb)
        assert err.code == codes.INCOMPATIBLE_VERSION and "1.1.0" in err.details


@pytest.mark.parametrize("conf, code", [
    ({"cniVersion": "0.3.1"}, 1),
    ({"cniVersion": "2.0.0"}, 1),
    ({"cniVersion": "banana"}, 1),
    ({}, 7),
    ({"cniVersion": 1.0}, 7),
])
def test_bad_versions(conf: dict, code: int) -> None:
    assert code_of(check_version, conf, "ADD").code == code


# -- network config --

def conf(**kw) -> dict:
    return {"cniVersion": "1.1.0", "name": "netfabric", "type": "fabric-cni", **kw}


def test_defaults_and_unknown_fields_ignored() -> None:
    nc = parse_netconf(conf(foo={"bar": 1}, runtimeConfig={"portMappings": []}, ipMasq=True,
                            capabilities={"x": True}), "ADD", {})
    assert nc.network == "" and nc.socket == DEFAULT_SOCKET and nc.timeout is None
    assert nc.labels == {} and nc.pod_namespace == "" and nc.prev_result is None


def test_socket_precedence() -> None:
    env = {"FABRIC_AGENT_SOCKET": "/run/x/agent.sock"}
    assert parse_netconf(conf(), "ADD", env).socket == "/run/x/agent.sock"
    assert parse_netconf(conf(agentSocket="/run/y.sock"), "ADD", env).socket == "/run/y.sock"


def test_fields_read() -> None:
    nc = parse_netconf(conf(network="vx", agentTimeout=2.5, dns={"nameservers": ["10.0.0.10"]},
                            args={"cni": {"labels": {"app": "web"}, "namespace": "prod"}}),
                       "ADD", {})
    assert (nc.network, nc.timeout, nc.labels, nc.pod_namespace) == (
        "vx", 2.5, {"app": "web"}, "prod")
    assert nc.dns == {"nameservers": ["10.0.0.10"]}
    listed = parse_netconf(conf(args={"cni": {"labels": [{"key": "a", "value": "1"},
                                                          {"key": "b", "value": "2"}]}}),
                           "ADD", {})
    assert listed.labels == {"a": "1", "b": "2"}


@pytest.mark.parametrize("bad, field", [
    ({"name": 3}, "name"),
    ({"name": ""}, "name"),
    ({"type": None}, "type"),
    ({"network": 5}, "network"),
    ({"agentSocket": "run/agent.sock"}, "agentSocket"),
    ({"agentSocket": 7}, "agentSocket"),
    ({"agentTimeout": 0}, "agentTimeout"),
    ({"agentTimeout": True}, "agentTimeout"),
    ({"agentTimeout": "30"}, "agentTimeout"),
    ({"agentTimeout": 10_000}, "agentTimeout"),
    ({"args": []}, "args"),
    ({"args": {"cni": "x"}}, "args.cni"),
    ({"args": {"cni": {"labels": {"a": 1}}}}, "args.cni.labels"),
    ({"args": {"cni": {"labels": [{"key": "a"}]}}}, "args.cni.labels"),
    ({"args": {"cni": {"namespace": 3}}}, "args.cni.namespace"),
    ({"dns": []}, "dns"),
    ({"dns": {"nameservers": "10.0.0.1"}}, "dns.nameservers"),
    ({"dns": {"domain": 1}}, "dns.domain"),
    ({"prevResult": []}, "prevResult"),
    ({"plugins": [{"type": "fabric-cni"}], "type": None}, "plugins"),
])
def test_bad_fields_are_code_7_naming_the_field(bad: dict, field: str) -> None:
    c = conf(**bad)
    for k, v in bad.items():
        if v is None:
            del c[k]
    err = code_of(parse_netconf, c, "ADD", {})
    assert err.code == codes.INVALID_NETWORK_CONFIG
    assert err.msg.endswith(field) and err.details.startswith(field), (err.msg, err.details)


def test_ipam_section_is_an_unsupported_field() -> None:
    err = code_of(parse_netconf, conf(ipam={"type": "host-local", "subnet": "10.9.0.0/16"}),
                  "ADD", {})
    assert err.code == codes.UNSUPPORTED_FIELD
    assert '"ipam"' in err.details and "host-local" in err.details  # key and value


def test_not_an_object() -> None:
    assert code_of(parse_netconf, [1], "ADD", {}).code == codes.INVALID_NETWORK_CONFIG


def test_del_ignores_prev_result() -> None:
    assert parse_netconf(conf(prevResult="garbage"), "DEL", {}).prev_result is None
