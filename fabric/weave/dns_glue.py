"""weaveDNS inside a weave backend: the server on the bridge address, pods registered by CNI.

A pod's name is the runtime's ``K8S_POD_NAME`` (the lab passes its pod names there); the
CNI result's ``dns`` field points the pod at this node's server with the domain as search
path, so ``getent hosts h2p1.weave.local`` (or plain ``h2p1``) resolves inside the pod.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address
from typing import Any

from fabric.api import Workload
from fabric.errors import ConfigError
from fabric.weave.dns import STATE_FILE, WeaveDNS

__all__ = ["PodDNS", "start_dns"]

log = logging.getLogger("fabric.weave")


class PodDNS:
    def __init__(self, dns: WeaveDNS, address: IPv4Address, domain: str, state_file) -> None:
        self.dns, self.address, self.domain = dns, address, domain
        self.state_file = state_file
        self.refused_names = 0  # pod names DNS could not hold (the pod still attached)

    def register(self, workload: Workload, ip: IPv4Address) -> dict[str, Any]:
        if workload.name:
            try:
                self.dns.add(workload.name, str(ip), workload.container_id)
            except ConfigError as exc:  # a name DNS cannot hold must not fail the pod
                self.refused_names += 1
                log.warning("weaveDNS: pod %r not registered: %s", workload.name, exc)
        return {"nameservers": [str(self.address)], "search": [self.domain.rstrip(".")],
                "options": ["ndots:2"]}

    def unregister(self, workload: Workload) -> None:
        self.dns.remove_container(workload.container_id)

    def remove_peer(self, peer: int) -> None:
        self.dns.remove_peer(peer)

    def operations(self) -> Mapping[str, Callable[[Mapping[str, Any]], Any]]:
        return {"dns.add": self._add, "dns.remove": self._remove,
                "dns.list": lambda _a: self.dns.entries()}

    def _add(self, args: Mapping[str, Any]) -> Any:
        name, ip = _text(args, "name"), _text(args, "ip")
        try:
            IPv4Address(ip)
        except ValueError as exc:
            raise ConfigError(f"{ip!r} is not an IPv4 address", field="ip") from exc
        entry = self.dns.add(name, ip, str(args.get("container") or "manual"))
        return {"added": entry is not None}

    def _remove(self, args: Mapping[str, Any]) -> Any:
        name = _text(args, "name")
        ip = args.get("ip") or None
        return {"removed": self.dns.remove(hostname=name, ip=ip)}

    def status(self) -> dict[str, Any]:
        st = self.dns.status()
        st.setdefault("address", str(self.address))
        st.setdefault("domain", self.domain)
        st["refused_pod_names"] = self.refused_names
        return st

    def stop(self) -> None:
        self.dns.stop()

    def teardown(self) -> None:
        self.dns.stop()
        self.state_file.unlink(missing_ok=True)


def _text(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} is required", field=key)
    return value


def start_dns(backend: Any, address: IPv4Address) -> PodDNS:
    """Start weaveDNS for a :class:`~fabric.weave.backend.WeaveBackend` on ``address``."""
    opts, ctx = backend.opts, backend.ctx
    dns = WeaveDNS(ctx.mesh, ctx.state_dir, domain=opts.dns_domain).start()
    upstream = None if opts.dns_upstream is None else list(opts.dns_upstream)
    dns.serve(str(address), opts.dns_port, upstream=upstream)
    return PodDNS(dns, address, opts.dns_domain, ctx.state_dir / STATE_FILE)
