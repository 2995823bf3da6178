"""Pod veths and their fast path: the workload lifecycle bridged backends
(:class:`fabric.bridged.BridgeBackend`) and routed ones (calico-bgp) share.

The backend says how a veth is plugged (onto a bridge, or routed with a /32) and builds its
Endpoint; this class names the host side, keeps the per-pod fast-path filter (option
``FastPath``) in step with the veths across attach, detach, agent restarts and teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fabric.api import NetworkContext, Workload
from fabric.net.fastpath import (
    FastPath,
    fast_path_from_config,
    fast_path_status,
    remove_fast_path,
    sync_fast_path,
)
from fabric.net.workload import PodInterface, detach_veth, host_ifname

__all__ = ["PodVeths"]


class PodVeths:
    """The host-side veths named ``<prefix>…`` of one network's pods on this node."""

    def __init__(self, ctx: NetworkContext, prefix: str) -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.fast: FastPath | None = fast_path_from_config(ctx)  # None: option off

    def host(self, workload: Workload) -> str:
        return host_ifname(self.prefix, workload)

    def start(self, uplinks: list[str], devices: Iterable[str]) -> None:
        """At backend start: attach the fast path to ``uplinks`` and to the pod veths among
        ``devices`` that outlived an agent restart, or (option off) remove old filters."""
        pods = [d for d in devices if d.startswith(self.prefix)]
        sync_fast_path(self.fast, self.ctx, uplinks, pods)

    def plug(self, workload: Workload,
             attach: Callable[[str], PodInterface]) -> tuple[str, PodInterface]:
        """Create the pod's veth with ``attach(host_ifname)``, then its fast-path filter."""
        host = self.host(workload)
        pod = attach(host)
        if self.fast is not None:
            self.fast.attach(host, "pod")
        return host, pod

    def unplug(self, workload: Workload) -> None:
        """Delete the pod's veth (idempotent) and forget its filter."""
        host = self.host(workload)
        detach_veth(host, workload)
        if self.fast is not None:
            self.fast.forget(host)

    def stop(self) -> None:
        """Agent stops: the filters stay, so pods keep their fast path meanwhile."""
        if self.fast is not None:
            self.fast.close(detach=False)

    def teardown(self, uplinks: list[str]) -> None:
        """Network removed: filters off the uplinks (pod veths go with their pods)."""
        remove_fast_path(self.ctx, uplinks)

    def status(self) -> dict[str, Any]:
        """The ``fast_path`` entry of the backend's status."""
        return fast_path_status(self.fast)
