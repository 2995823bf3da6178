"""Resolver configuration around weaveDNS: upstream servers from resolv.conf, the CNI
result's ``dns`` field pointing pods at the node's server, and the pod resolv.conf a
runtime writes from that field."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from fabric.errors import ConfigError

__all__ = ["parse_upstream", "nameservers", "cni_dns", "render_resolv_conf", "DEFAULT_NDOTS"]

DEFAULT_NDOTS = 1  # weave's resolv.conf for containers: single-label names try the search domain


def parse_upstream(text: str, default_port: int = 53) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` -> (ip, port); ConfigError naming the entry."""
    s = text.strip()
    host, port = s, default_port
    try:
        if s.startswith("["):
            host, _, rest = s[1:].partition("]")
            if rest:
                port = int(rest.removeprefix(":"))
        elif s.count(":") == 1:
            host, p = s.split(":")
            port = int(p)
        host = str(ip_address(host))
        if not 0 < port < 65536:
            raise ValueError(port)
    except ValueError as exc:
        raise ConfigError(f"upstream DNS server {text!r} is invalid", field="upstream",
                          fix="give IP, IP:PORT or [IPv6]:PORT") from exc
    return host, port


def nameservers(resolv_conf: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf text, in order (bad lines skipped,
    as the C resolver does; a zone index like ``fe80::1%eth0`` is kept off)."""
    out = []
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            addr = parts[1].split("%")[0]
            try:
                out.append(str(ip_address(addr)))
            except ValueError:
                continue
    return out


def cni_dns(server: str, domain: str = "weave.local.", ndots: int = DEFAULT_NDOTS,
            extra_search: list[str] | None = None) -> dict[str, Any]:
    """The CNI result ``dns`` object for pods of a node whose weaveDNS listens on
    ``server`` (the bridge address; port 53: resolv.conf cannot name another)."""
    d = domain.strip(".")
    return {"nameservers": [str(ip_address(server))], "domain": d,
            "search": [d, *(extra_search or [])], "options": [f"ndots:{int(ndots)}"]}


def render_resolv_conf(dns: dict[str, Any]) -> str:
    """resolv.conf text from a CNI result ``dns`` object (nameservers, domain, search,
    options), as a runtime writes it into the pod; ConfigError if it names no server."""
    servers = [str(s) for s in dns.get("nameservers") or []]
    if not servers:
        raise ConfigError("the CNI result's dns field names no nameserver",
                          field="dns.nameservers",
                          fix="set the network's DNS server (weaveDNS address) in the result")
    for s in servers:
        try:
            ip_address(s)
        except ValueError as exc:
            raise ConfigError(f"nameserver {s!r} is not an IP address",
                              field="dns.nameservers", fix="use IP addresses") from exc
    lines = [f"nameserver {s}" for s in servers[:3]]  # the C resolver reads at most 3
    search = [s.strip(".") for s in dns.get("search") or [] if s.strip(".")]
    if search:
        lines.append("search " + " ".join(search[:6]))
    elif dns.get("domain"):
        lines.append(f"domain {str(dns['domain']).strip('.')}")
    if dns.get("options"):
        lines.append("options " + " ".join(str(o) for o in dns["options"]))
    return "\n".join(lines) + "\n"
