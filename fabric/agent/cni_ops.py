"""The agent's CNI operations: request parsing and one handler per ``cni.*`` op.

Requests come from `fabric-cni` (see docs/architecture.md, "Agent control protocol").
The plugin opens ``CNI_NETNS`` itself and passes the descriptor with the request
(``request["_fds"][0]``, put there by :mod:`fabric.agent.server`): the agent then
reaches the pod's namespace through ``/proc/self/fd/N`` and never resolves the
runtime's path in its own mount namespace, where it may not exist (podman under
``ip netns exec``, a containerized kubelet). Without a descriptor the path is used.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface
from typing import TYPE_CHECKING, Any

from fabric.agent.server import RawAnswer
from fabric.api import Handle, Workload
from fabric.errors import AgentUnavailable, ConfigError

if TYPE_CHECKING:
    from fabric.agent.daemon import Agent

__all__ = ["CNI_HANDLERS", "workload_from_request", "requested_address", "netns_of"]

log = logging.getLogger("fabric.agent")
_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs descriptor: the namespace's CLONE_* type
_CLONE_NEWNET = 0x40000000


def workload_from_request(req: dict[str, Any]) -> Workload:
    cid, ifname = req.get("container_id"), req.get("ifname")
    if not isinstance(cid, str) or not cid or not isinstance(ifname, str) or not ifname:
        raise ConfigError("container_id and ifname are required strings")
    labels = req.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ConfigError("labels must be a mapping of strings to strings")
    return Workload(
        container_id=cid,
        ifname=ifname,
        netns=str(req.get("netns") or ""),
        name=str(req.get("pod_name") or ""),
        namespace=str(req.get("pod_namespace") or "default"),
        labels=labels,
    )


def requested_address(req: dict[str, Any]) -> IPv4Address | None:
    """The static address asked for (``ips``: at most one IPv4, prefix length ignored)."""
    ips = req.get("ips")
    if not ips:
        return None
    if not isinstance(ips, list) or not all(isinstance(x, str) for x in ips):
        raise ConfigError("ips must be a list of address strings", field="ips")
    try:
        addrs = {IPv4Interface(x).ip for x in ips}
    except ValueError as exc:
        raise ConfigError(f"ips: {exc}", fix="give IPv4 addresses, e.g. 10.244.1.7",
                          field="ips") from exc
    if len(addrs) > 1:
        raise ConfigError(
            f"ips asks for {len(addrs)} addresses ({', '.join(sorted(map(str, addrs)))}); a "
            "netfabric interface has one IPv4 address", fix="request one address", field="ips")
    return addrs.pop()


def netns_of(req: dict[str, Any]) -> str:
    """The path through which the agent reaches the pod's namespace for this request.

    A passed descriptor must be a network namespace (ConfigError naming ``netns``, which
    `fabric-cni` reports as CNI code 4)."""
    fds = req.get("_fds") or []
    path = str(req.get("netns") or "")
    if fds:
        if not _is_netns(fds[0]):
            raise ConfigError(f"CNI_NETNS {path or '(passed descriptor)'} is not a network "
                              "namespace", fix="pass the path of the pod's network namespace, "
                              "e.g. /run/netns/NAME or /proc/PID/ns/net", field="netns")
        return f"/proc/{os.getpid()}/fd/{fds[0]}"
    if path and req.get("op") != "cni.del" and os.path.exists(path):
        # a client that passed no descriptor (an older fabric-cni, a script): the path as
        # the agent sees it, which differs when the caller has its own mount namespace
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ok = _is_netns(fd)
        finally:
            os.close(fd)
        if not ok:
            raise ConfigError(
                f"CNI_NETNS {path} is not a network namespace as the agent sees it",
                fix="if the runtime has its own mount namespace, use a fabric-cni that passes "
                    "the namespace as a descriptor", field="netns")
    return path


def _is_netns(fd: int) -> bool:
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):  # not an nsfs file
            return False
        raise


def _add(agent: Agent, req: dict[str, Any]) -> Any:
    wl = workload_from_request(req)
    if not wl.netns:
        raise ConfigError("netns is required for ADD", field="netns")
    return agent.network(req).add(wl, requested=requested_address(req),
                                  kernel_netns=netns_of(req),
                                  default_route=req.get("default_route") is True)


def _del(agent: Agent, req: dict[str, Any]) -> None:
    wl = workload_from_request(req)
    agent.network(req).delete(wl, kernel_netns=netns_of(req))


def _check(agent: Agent, req: dict[str, Any]) -> None:
    expected = req.get("expected")
    if expected is not None and not isinstance(expected, dict):
        raise ConfigError("expected must be a mapping with ips / mac")
    agent.network(req).check(workload_from_request(req), expected,
                             kernel_netns=netns_of(req))


def _status(agent: Agent, req: dict[str, Any]) -> None:
    net = agent.network(req)
    if not net.ready:
        raise AgentUnavailable(f"network {net.spec.name} is not ready")


def _gc(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    valid = req.get("valid") or []
    if not isinstance(valid, list):
        raise ConfigError("valid must be a list of {container_id, ifname}")
    handles = {
        Handle(str(v.get("container_id")), str(v.get("ifname")))
        for v in valid if isinstance(v, dict)
    }
    return {"released": agent.network(req).gc(handles)}


class _InProcess:
    """What `fabric-cni`'s logic needs when the agent runs it for a forwarder."""

    def __init__(self, agent: Agent, netns_fd: int | None) -> None:
        self.agent = agent
        self.netns_fd = netns_fd

    def serves(self, socket_path: str) -> bool:
        return os.path.realpath(socket_path) == os.path.realpath(self.agent.server.path)

    def call(self, request: dict[str, Any], fd: int | None) -> Any:
        return self.agent.dispatch({**request, **({"_fds": [fd]} if fd is not None else {})})


def _exec(agent: Agent, req: dict[str, Any]) -> RawAnswer:
    """``cni.exec``: a whole plugin invocation (CNI_* environment, stdin) run here for the
    native forwarder (fabric/cni/forward.c), so the runtime's process costs ~1 ms of CPU
    instead of a Python start (docs/benchmarks.md). The answer is ``STATUS\\n`` + stdout."""
    import io

    from fabric.cni.main import run

    env, stdin = req.get("env"), req.get("stdin")
    if not isinstance(env, dict) or not isinstance(stdin, str):
        raise ConfigError("cni.exec needs env (a mapping) and stdin (a string)")
    environ = {str(k): str(v) for k, v in env.items() if str(k).startswith(("CNI_", "FABRIC_"))}
    fds = req.get("_fds") or []
    out, err = io.StringIO(), io.StringIO()
    status = run(environ, io.BytesIO(stdin.encode()), out, err,
                 local=_InProcess(agent, fds[0] if fds else None))
    if err.getvalue():
        log.info("cni.exec %s: %s", environ.get("CNI_COMMAND"), err.getvalue().strip())
    return RawAnswer(f"{status}\n{out.getvalue()}".encode())


CNI_HANDLERS: dict[str, Callable[[Agent, dict[str, Any]], Any]] = {
    "cni.add": _add, "cni.del": _del, "cni.check": _check, "cni.status": _status,
    "cni.gc": _gc, "cni.exec": _exec,
}
