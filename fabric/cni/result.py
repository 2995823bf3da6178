"""CNI result shapes: validate a prevResult, chain results, print in a cniVersion's shape.

The internal form is the 1.1.0 shape. Differences between the supported versions:

* 0.4.0: every ``ips`` entry carries ``"version": "4"`` or ``"6"``.
* 1.0.0: no ``version`` in ``ips``.
* 1.1.0: adds interface ``mtu``, ``socketPath``, ``pciID`` and route ``mtu``, ``advmss``,
  ``priority``, ``table``, ``scope``; printing for an older version drops them.

Other keys (written by other plugins of a chain) are passed through unchanged.
"""

from __future__ import annotations

import ipaddress

from fabric.cni.errors import INVALID_NETWORK_CONFIG, CNIError
from fabric.cni.spec import parse_version

TYPE_CHECKING = False  # no `typing` at run time: fabric-cni imports this at every pod start
if TYPE_CHECKING:
    from typing import Any

__all__ = ["normalize", "to_version", "chain", "find_interface", "interface_ips"]

_IFACE_11 = ("mtu", "socketPath", "pciID")
_ROUTE_11 = ("mtu", "advmss", "priority", "table", "scope")


def _bad(field: str, reason: str) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"{field}: {reason}",
                    msg=f"invalid network configuration: {field}")


def _list_of_objects(result: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = result.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise _bad(f"{where}.{key}", "must be a list of objects")
    return [dict(x) for x in value]


def normalize(result: Any, where: str = "prevResult") -> dict[str, Any]:
    """Check a result's structure and return it in the internal (1.1.0) shape.

    ``where`` names the result in errors (CNIError 7 naming the bad field)."""
    if not isinstance(result, dict):
        raise _bad(where, "must be an object")
    out = {k: v for k, v in result.items() if k != "cniVersion"}
    interfaces = _list_of_objects(result, "interfaces", where)
    for i, iface in enumerate(interfaces):
        if not isinstance(iface.get("name"), str) or not iface["name"]:
            raise _bad(f"{where}.interfaces[{i}].name", "must be a non-empty string")
        for key in ("mac", "sandbox"):
            if iface.get(key) is not None and not isinstance(iface[key], str):
                raise _bad(f"{where}.interfaces[{i}].{key}", "must be a string")
    ips = _list_of_objects(result, "ips", where)
    for i, ip in enumerate(ips):
        try:
            ipaddress.ip_interface(ip.get("address"))
            if "/" not in ip["address"]:
                raise ValueError("no prefix length")
        except (ValueError, TypeError) as exc:
            raise _bad(f"{where}.ips[{i}].address",
                       f"{ip.get('address')!r} is not an address in CIDR notation") from exc
        if ip.get("gateway") is not None:
            try:
                ipaddress.ip_address(ip["gateway"])
            except ValueError as exc:
                raise _bad(f"{where}.ips[{i}].gateway", f"{ip['gateway']!r} is not an address") \
                    from exc
        index = ip.get("interface")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or not 0 <= index < len(interfaces)):
            raise _bad(f"{where}.ips[{i}].interface",
                       f"{index!r} is not an index into interfaces ({len(interfaces)} listed)")
        ip.pop("version", None)
    routes = _list_of_objects(result, "routes", where)
    for i, route in enumerate(routes):
        if not isinstance(route.get("dst"), str):
            raise _bad(f"{where}.routes[{i}].dst", "must be a CIDR string")
    dns = result.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise _bad(f"{where}.dns", "must be an object")
    out.update(interfaces=interfaces, ips=ips, routes=routes, dns=dict(dns or {}))
    return out


def to_version(result: dict[str, Any], version: str) -> dict[str, Any]:
    """The internal result printed for ``version`` (cniVersion first)."""
    old = parse_version(version) < (1, 1, 0)
    interfaces = [
        {k: v for k, v in iface.items() if not (old and k in _IFACE_11)}
        for iface in result.get("interfaces", [])
    ]
    ips = []
    for ip in result.get("ips", []):
        ip = {k: v for k, v in ip.items() if k != "version"}
        if parse_version(version) < (1, 0, 0):
            family = ipaddress.ip_interface(ip["address"]).version
            ip = {"version": str(family), **ip}
        ips.append(ip)
    routes = [
        {k: v for k, v in route.items() if not (old and k in _ROUTE_11)}
        for route in result.get("routes", [])
    ]
    out: dict[str, Any] = {"cniVersion": version}
    out.update({k: v for k, v in result.items() if k not in ("cniVersion", "version")})
    out.update(interfaces=interfaces, ips=ips, routes=routes, dns=dict(result.get("dns") or {}))
    return out


def find_interface(result: dict[str, Any], ifname: str, netns: str) -> int | None:
    """Index of the sandbox interface ``ifname`` in ``netns`` (any sandbox if netns is empty)."""
    for i, iface in enumerate(result.get("interfaces", [])):
        if iface.get("name") == ifname and iface.get("sandbox") and (
            not netns or iface.get("sandbox") == netns
        ):
            return i
    return None


def interface_ips(result: dict[str, Any], index: int) -> list[dict[str, Any]]:
    return [ip for ip in result.get("ips", []) if ip.get("interface") == index]


def chain(prev: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """``prev`` (internal shape) with our interfaces, ips and routes appended.

    Our ``ips[].interface`` indexes are shifted past prev's interfaces; DNS keys we
    set win, prev's others are kept."""
    if not prev:
        return ours
    base = len(prev.get("interfaces", []))
    ips = []
    for ip in ours.get("ips", []):
        ip = dict(ip)
        if isinstance(ip.get("interface"), int):
            ip["interface"] += base
        ips.append(ip)
    out = dict(prev)
    out["interfaces"] = [*prev.get("interfaces", []), *ours.get("interfaces", [])]
    out["ips"] = [*prev.get("ips", []), *ips]
    out["routes"] = [*prev.get("routes", []), *ours.get("routes", [])]
    out["dns"] = {**prev.get("dns", {}), **ours.get("dns", {})}
    return out
