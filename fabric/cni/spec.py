"""CNI spec types for `fabric-cni`: versions, environment, network config (stdlib only).

Spec facts used here (CNI SPEC.md 1.1.0, with 1.0.0 and 0.4.0 compatibility):

* Required environment per verb: ADD and CHECK need CNI_CONTAINERID, CNI_NETNS and
  CNI_IFNAME; DEL needs CNI_CONTAINERID and CNI_IFNAME (CNI_NETNS optional); GC needs
  CNI_PATH; STATUS and VERSION need only CNI_COMMAND.
* GC and STATUS exist from 1.1.0 on; a lower cniVersion gets code 1.
* Config on stdin is one plugin configuration object (a 0.4.0 single network config
  or the per-plugin config a runtime derives from a conflist). Keys netfabric does not
  know are ignored, except ``ipam``: addresses come from the agent, so an ``ipam``
  section would be silently ignored otherwise, and is refused with code 2.
"""

from __future__ import annotations

import os

from fabric.cni.errors import (
    INCOMPATIBLE_VERSION,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    UNSUPPORTED_FIELD,
    CNIError,
)

TYPE_CHECKING = False  # no `typing` at run time: fabric-cni imports this at every pod start
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "SUPPORTED_VERSIONS",
    "LATEST_VERSION",
    "VERBS",
    "REQUIRED_ENV",
    "DEFAULT_TIMEOUTS",
    "parse_version",
    "check_version",
    "Invocation",
    "read_invocation",
    "parse_cni_args",
    "valid_container_id",
    "valid_ifname",
    "NetConf",
    "parse_netconf",
    "static_ips",
]

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
_MIN_VERSION = {"GC": (1, 1, 0), "STATUS": (1, 1, 0)}
# Seconds for the whole agent exchange, per verb, unless "agentTimeout" says otherwise.
DEFAULT_TIMEOUTS = {"ADD": 30.0, "DEL": 30.0, "CHECK": 30.0, "STATUS": 10.0, "GC": 60.0}
DEFAULT_SOCKET = "/run/netfabric/agent.sock"
_ID_EXTRA = frozenset("_.-")


def parse_version(value: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; ValueError unless it is MAJOR.MINOR.PATCH."""
    parts = value.split(".")
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"{value!r} is not a MAJOR.MINOR.PATCH version")
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_version(conf: dict[str, Any], verb: str) -> str:
    """The config's cniVersion if this plugin speaks it for ``verb``; else CNIError 1 or 7."""
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CNIError(INVALID_NETWORK_CONFIG, "cniVersion is missing or not a string",
                       msg="invalid network configuration: cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION,
                       f"cniVersion {version!r} is not supported; supported: "
                       f"{', '.join(SUPPORTED_VERSIONS)}")
    need = _MIN_VERSION.get(verb)
    if need and parse_version(version) < need:
        raise CNIError(INCOMPATIBLE_VERSION,
                       f"{verb} needs cniVersion 1.1.0 or later; the config says {version}")
    return version


def valid_container_id(value: str) -> bool:
    """Alphanumeric first, then alphanumerics, '_', '.', '-' (CNI_CONTAINERID rule)."""
    if not value or not (value[0].isascii() and value[0].isalnum()):
        return False
    return all((c.isascii() and c.isalnum()) or c in _ID_EXTRA for c in value)


def valid_ifname(value: str) -> bool:
    """Linux interface name rules the spec repeats: 1-15 chars, not . or .., no / : space."""
    if not value or len(value) > 15 or value in (".", ".."):
        return False
    return not any(c in "/:" or c.isspace() for c in value)


class Invocation:
    """CNI_* environment of one call, validated for its verb."""

    __slots__ = ("verb", "container_id", "netns", "ifname", "args", "path", "local")

    def __init__(self, verb: str, container_id: str = "", netns: str = "", ifname: str = "",
                 args: dict[str, str] | None = None, path: str = "") -> None:
        self.local: Any = None  # set when the agent runs the plugin in-process (cni.exec)
        self.verb = verb
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args or {}
        self.path = path


def parse_cni_args(value: str) -> dict[str, str]:
    """``"K8S_POD_NAME=web;IgnoreUnknown=1"`` -> dict; CNIError 4 if a pair is malformed."""
    out: dict[str, str] = {}
    for item in value.split(";"):
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_ARGS entry {item!r} is not KEY=VALUE (CNI_ARGS={value!r})")
        out[key] = val
    return out


def read_invocation(environ: os._Environ[str] | dict[str, str],
                    check_netns: bool = True) -> Invocation:
    """Validate CNI_COMMAND and the variables its verb requires (CNIError 4 otherwise).

    ``check_netns=False``: CNI_NETNS is not looked up here (the agent running the plugin
    for a forwarder got the namespace as a descriptor; its own view of the path differs)."""
    verb = environ.get("CNI_COMMAND", "")
    if not verb:
        raise CNIError(INVALID_ENVIRONMENT, "CNI_COMMAND is not set",
                       msg="invalid environment variables: CNI_COMMAND")
    if verb not in VERBS:
        raise CNIError(INVALID_ENVIRONMENT,
                       f"CNI_COMMAND={verb!r} is not one of {', '.join(VERBS)}",
                       msg="invalid environment variables: CNI_COMMAND")
    missing = [name for name in REQUIRED_ENV[verb] if not environ.get(name)]
    if missing:
        names = ", ".join(missing)
        raise CNIError(INVALID_ENVIRONMENT, f"{verb} needs {names}: not set or empty",
                       msg=f"invalid environment variables: {names}")
    inv = Invocation(verb, path=environ.get("CNI_PATH", ""))
    if verb in ("ADD", "CHECK", "DEL"):
        inv.container_id = environ["CNI_CONTAINERID"]
        inv.ifname = environ["CNI_IFNAME"]
        inv.netns = environ.get("CNI_NETNS", "")
        if not valid_container_id(inv.container_id):
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_CONTAINERID {inv.container_id!r} must start with a letter or "
                           "digit followed by letters, digits, '_', '.' or '-'",
                           msg="invalid environment variables: CNI_CONTAINERID")
        if not valid_ifname(inv.ifname):
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_IFNAME {inv.ifname!r} is not a valid interface name (1-15 "
                           "characters, not '.' or '..', no '/', ':' or whitespace)",
                           msg="invalid environment variables: CNI_IFNAME")
        if inv.netns and not inv.netns.startswith("/"):
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_NETNS {inv.netns!r} must be an absolute path",
                           msg="invalid environment variables: CNI_NETNS")
        if verb == "ADD" and check_netns and not os.path.exists(inv.netns):
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_NETNS {inv.netns} does not exist",
                           msg="invalid environment variables: CNI_NETNS")
        inv.args = parse_cni_args(environ.get("CNI_ARGS", ""))
    return inv


class NetConf:
    """What netfabric reads from the plugin config on stdin."""

    __slots__ = ("raw", "cni_version", "name", "network", "socket", "timeout", "labels",
                 "pod_namespace", "dns", "prev_result", "ips", "default_route")

    def __init__(self, raw: dict[str, Any], cni_version: str) -> None:
        self.raw = raw
        self.cni_version = cni_version
        self.name = ""
        self.network = ""
        self.socket = DEFAULT_SOCKET
        self.timeout: float | None = None
        self.labels: dict[str, str] = {}
        self.pod_namespace = ""
        self.dns: dict[str, Any] = {}
        self.prev_result: dict[str, Any] | None = None
        self.ips: list[str] = []  # static addresses asked for (see static_ips)
        self.default_route = False  # "defaultRoute": true takes it from another interface


def _bad(field: str, reason: str) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"{field}: {reason}",
                    msg=f"invalid network configuration: {field}")


def _labels(value: Any) -> dict[str, str]:
    """``args.cni.labels``: a mapping, or the conventions' list of {"key", "value"}."""
    if isinstance(value, dict):
        if all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
    elif isinstance(value, list):
        out = {}
        for item in value:
            if not (isinstance(item, dict) and isinstance(item.get("key"), str)
                    and isinstance(item.get("value"), str)):
                break
            out[item["key"]] = item["value"]
        else:
            return out
    raise _bad("args.cni.labels", "must map strings to strings, or be a list of "
               '{"key": ..., "value": ...} objects')


def _ips(value: Any, field: str) -> list[str]:
    """A list of IPv4 addresses (CIDR or bare) as strings; the agent checks the rest."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise _bad(field, "must be a list of address strings")
    return list(value)


def static_ips(nc: NetConf, cni_args: dict[str, str]) -> list[str]:
    """Every static address request of one ADD, or CNIError 7 if two sources disagree.

    Sources: ``runtimeConfig.ips`` (capability ``ips``), ``args.cni.ips`` and the
    ``IP=`` key of CNI_ARGS (comma-separated, as host-local reads it)."""
    env = [x for x in cni_args.get("IP", "").split(",") if x]
    if env and nc.ips and set(env) != set(nc.ips):
        raise _bad("ips", f"CNI_ARGS IP={','.join(env)} differs from the config's "
                   f"{', '.join(nc.ips)}")
    return nc.ips or env


_PORT_LABEL = "port.netfabric.io/"  # fabric.policy.model.PORT_LABEL_PREFIX (stdlib only here)


def _ports(value: Any) -> dict[str, str]:
    """``args.cni.ports``: named container ports for NetworkPolicy, as port labels.

    ``{"http": 8080, "dns": "53/UDP"}`` or the pod spec's list of ``{"name",
    "containerPort", "protocol"}``; the policy engine checks names and numbers."""
    items = value.items() if isinstance(value, dict) else (
        [(p.get("name"), f"{p.get('containerPort')}/{p.get('protocol', 'TCP')}")
         for p in value if isinstance(p, dict)]
        if isinstance(value, list) and all(isinstance(p, dict) for p in value) else None)
    out = {}
    for name, port in items if items is not None else [(None, None)]:
        number, _, proto = str(port).partition("/")
        if not isinstance(name, str) or isinstance(port, bool) or not number.isdigit():
            raise _bad("args.cni.ports", 'must map port names to numbers or "NUMBER/PROTOCOL", '
                       'or be a list of {"name", "containerPort", "protocol"}')
        out[_PORT_LABEL + name] = f"{number}-{proto.upper()}" if proto else number
    return out


def _dns(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad("dns", "must be an object")
    for key in ("nameservers", "search", "options"):
        item = value.get(key)
        if item is not None and not (isinstance(item, list)
                                     and all(isinstance(x, str) for x in item)):
            raise _bad(f"dns.{key}", "must be a list of strings")
    if value.get("domain") is not None and not isinstance(value["domain"], str):
        raise _bad("dns.domain", "must be a string")
    return {k: v for k, v in value.items() if v not in (None, [], "")}


def parse_netconf(conf: Any, verb: str, environ: os._Environ[str] | dict[str, str]) -> NetConf:
    """Validate the decoded stdin config for ``verb``; CNIError 1, 2 or 7 naming the field."""
    if not isinstance(conf, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "the config on stdin must be a JSON object")
    nc = NetConf(conf, check_version(conf, verb))
    if "plugins" in conf and "type" not in conf:
        raise _bad("plugins", "stdin holds a whole network configuration list; the runtime "
                   "must pass one plugin's derived configuration")
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise _bad("name", "the network name is missing or not a string")
    nc.name = name
    if not isinstance(conf.get("type"), str) or not conf["type"]:
        raise _bad("type", "the plugin type is missing or not a string")
    ipam = conf.get("ipam")
    if ipam:
        raise CNIError(UNSUPPORTED_FIELD,
                       f'"ipam": {_short(ipam)} - netfabric assigns addresses in its agent; '
                       "remove the ipam section and choose the IPAM in the agent's network "
                       "config", msg='unsupported field in network configuration: "ipam"')
    network = conf.get("network", "")
    if not isinstance(network, str):
        raise _bad("network", "must be a netfabric network name (string)")
    nc.network = network
    sock = conf.get("agentSocket")
    if sock is None:
        sock = environ.get("FABRIC_AGENT_SOCKET") or DEFAULT_SOCKET
    elif not isinstance(sock, str) or not sock.startswith("/"):
        raise _bad("agentSocket", "must be an absolute path to the agent's socket")
    nc.socket = sock
    timeout = conf.get("agentTimeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not 0 < timeout <= 600:
            raise _bad("agentTimeout", "must be a number of seconds in (0, 600]")
        nc.timeout = float(timeout)
    args = conf.get("args")
    if args is not None and not isinstance(args, dict):
        raise _bad("args", "must be an object")
    cni_args = (args or {}).get("cni")
    if cni_args is not None:
        if not isinstance(cni_args, dict):
            raise _bad("args.cni", "must be an object")
        if cni_args.get("labels") is not None:
            nc.labels = _labels(cni_args["labels"])
        if cni_args.get("ports") is not None:
            nc.labels.update(_ports(cni_args["ports"]))
        namespace = cni_args.get("namespace")
        if namespace is not None:
            if not isinstance(namespace, str):
                raise _bad("args.cni.namespace", "must be a string")
            nc.pod_namespace = namespace
        nc.ips = _ips(cni_args.get("ips"), "args.cni.ips") or nc.ips
    runtime = conf.get("runtimeConfig")
    if runtime is not None and not isinstance(runtime, dict):
        raise _bad("runtimeConfig", "must be an object")
    runtime_ips = _ips((runtime or {}).get("ips"), "runtimeConfig.ips")
    if runtime_ips and nc.ips and set(runtime_ips) != set(nc.ips):
        raise _bad("runtimeConfig.ips", f"{runtime_ips} differs from args.cni.ips {nc.ips}")
    nc.ips = runtime_ips or nc.ips
    default_route = conf.get("defaultRoute")
    if default_route is not None and not isinstance(default_route, bool):
        raise _bad("defaultRoute", "must be true or false")
    nc.default_route = bool(default_route)
    if conf.get("dns") is not None:
        nc.dns = _dns(conf["dns"])
    prev = conf.get("prevResult")
    if prev is not None and verb != "DEL":  # DEL ignores prevResult, even a broken one
        if not isinstance(prev, dict):
            raise _bad("prevResult", "must be an object")
        nc.prev_result = prev
    return nc


def _short(value: Any) -> str:
    import json

    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
