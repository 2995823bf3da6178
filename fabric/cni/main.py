"""`fabric-cni`: the CNI plugin executable, a thin client of the node agent.

The runtime runs it with CNI_* variables and the plugin config on stdin; it asks the
agent (``cni.add`` / ``cni.del`` / ``cni.check`` / ``cni.status`` / ``cni.gc`` over the
control socket) and prints the result, or an error object with exit status 1.

Decisions where the spec leaves room:

* DEL and GC when no agent answers: if the agent's state directory (the socket's
  directory) still holds ``agent.json``, the agent is merely down and its workloads
  still exist: code 11, so the runtime retries. Without ``agent.json`` the fabric was
  removed from this node (``fabric down``) or never ran, nothing of ours can be left:
  success, with a note on stderr. A timeout or a broken answer is always code 11.
* DEL and GC of a network the agent does not serve succeed (nothing of ours exists).
* ADD/CHECK/DEL time out after ``agentTimeout`` seconds (default 30; STATUS 10, GC 60).
* CHECK finds our interface (CNI_IFNAME in CNI_NETNS) in prevResult and sends its MAC
  and addresses as ``expected`` with ``cni.check``.
* CNI_NETNS is opened here, by the plugin, in the runtime's mount namespace, and the
  descriptor goes to the agent with the request (SCM_RIGHTS): a runtime whose netns
  paths the agent cannot see (another mount namespace) works. A CNI_NETNS that is not
  a network namespace is code 4 naming it (DEL then proceeds from the agent's record).
* Static addresses (``IP=`` in CNI_ARGS, ``args.cni.ips``, ``runtimeConfig.ips``) are
  honoured exactly or refused: 7 (not an address of this node's chunks, or sources that
  disagree), 103 (in use). ``"defaultRoute": true`` gives this interface the pod's
  default route even if another interface has it (by default the first one keeps it).
* Errors echo the config's cniVersion when it is a supported one (also for errors in
  the CNI_* variables, found after the config is read).

Only the standard library is imported, so the plugin starts fast.
"""

from __future__ import annotations

import os
import sys
import time

from fabric.cni import errors as codes
from fabric.cni.errors import CNIError
from fabric.cni.result import chain, find_interface, interface_ips, normalize, to_version
from fabric.cni.spec import (
    DEFAULT_TIMEOUTS,
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    Invocation,
    NetConf,
    parse_netconf,
    parse_version,
    read_invocation,
    static_ips,
)
from fabric.control import AgentUnreachable, call, dumps, loads
from fabric.errors import FabricError

TYPE_CHECKING = False  # typing costs ~3 ms of import at every plugin start
if TYPE_CHECKING:
    from typing import IO, Any

__all__ = ["main", "run"]

# fabric.errors kind -> CNI code (kinds not listed: AGENT_FAILURE)
_KIND_CODES = {
    "AgentUnavailable": codes.TRY_AGAIN_LATER,
    "StoreError": codes.TRY_AGAIN_LATER,
    "StoreUnavailable": codes.TRY_AGAIN_LATER,
    "StoreCompacted": codes.TRY_AGAIN_LATER,
    "StoreConflict": codes.TRY_AGAIN_LATER,
    "ConfigError": codes.INVALID_NETWORK_CONFIG,
    "NotFound": codes.UNKNOWN_CONTAINER,
    "BackendError": codes.BACKEND_FAILURE,
    "KernelFeatureMissing": codes.KERNEL_FEATURE_MISSING,
    "IPAMError": codes.IPAM_FAILURE,
    "PoolExhausted": codes.POOL_EXHAUSTED,
    "PolicyError": codes.POLICY_FAILURE,
}
_STATUS_LIMITED = {"StoreError", "StoreUnavailable", "StoreCompacted", "BackendError",
                   "KernelFeatureMissing"}


def _kind(exc: FabricError) -> str:
    return getattr(exc, "kind", type(exc).__name__)


def _network_unknown(exc: FabricError) -> bool:
    """The agent's NotFound for a network it does not serve (vs. an unknown container)."""
    return _kind(exc) == "NotFound" and getattr(exc, "field", None) == "network"


def _cni_error(exc: FabricError, verb: str) -> CNIError:
    kind = _kind(exc)
    if isinstance(exc, AgentUnreachable):
        if verb == "STATUS":
            return CNIError(codes.NOT_AVAILABLE, str(exc), msg="netfabric agent unreachable")
        detail = str(exc)
        if exc.reason == "timeout" and verb == "ADD":
            detail += "; the agent may still finish the ADD, a DEL will undo it"
        return CNIError(codes.TRY_AGAIN_LATER, detail, msg="netfabric agent unreachable")
    if _network_unknown(exc):
        return CNIError(codes.INVALID_NETWORK_CONFIG, str(exc),
                        msg="invalid network configuration: network")
    if verb == "STATUS":
        if kind == "AgentUnavailable":
            return CNIError(codes.NOT_AVAILABLE, str(exc))
        if kind in _STATUS_LIMITED:
            return CNIError(codes.LIMITED_CONNECTIVITY, f"{kind}: {exc}")
    field = getattr(exc, "field", None)
    if field == "netns":  # the agent found CNI_NETNS unusable
        return CNIError(codes.INVALID_ENVIRONMENT, str(exc),
                        msg="invalid environment variables: CNI_NETNS")
    if field == "ifname" and kind == "BackendError":
        return CNIError(codes.INTERFACE_EXISTS, str(exc))
    code = _KIND_CODES.get(kind, codes.AGENT_FAILURE)
    if code == codes.INVALID_NETWORK_CONFIG and field:
        return CNIError(code, str(exc), msg=f"invalid network configuration: {field}")
    return CNIError(code, f"{kind}: {exc}" if code == codes.AGENT_FAILURE else str(exc))


def _agent(inv: Invocation, nc: NetConf, request: dict[str, Any], fd: int | None = None) -> Any:
    timeout = nc.timeout or DEFAULT_TIMEOUTS[inv.verb]
    try:
        if inv.local is not None and inv.local.serves(nc.socket):  # cni.exec: no socket
            return inv.local.call({"network": nc.network, **request}, fd)
        return call(nc.socket, {"network": nc.network, **request}, timeout=timeout,
                    fds=() if fd is None else (fd,))
    except FabricError as exc:
        raise _cni_error(exc, inv.verb) from exc


_NS_GET_NSTYPE = 0xB703  # ioctl(2) on a namespace file: its CLONE_NEW* type
_CLONE_NEWNET = 0x40000000


def open_netns(inv: Invocation, required: bool) -> int | None:
    """A descriptor of CNI_NETNS for the agent; code 4 if ``required`` and unusable."""
    import fcntl

    if not inv.netns:
        return None
    try:
        if inv.local is not None:  # opened by the forwarder, in the runtime's mount namespace
            if inv.local.netns_fd is None:
                raise FileNotFoundError(2, "No such file or directory (for the runtime)")
            fd = os.dup(inv.local.netns_fd)
        else:
            fd = os.open(inv.netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if not required:
            return None
        raise CNIError(codes.INVALID_ENVIRONMENT, f"CNI_NETNS {inv.netns} cannot be opened: "
                       f"{exc.strerror}", msg="invalid environment variables: CNI_NETNS") \
            from exc
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind != _CLONE_NEWNET:
        os.close(fd)
        if not required:
            return None
        raise CNIError(codes.INVALID_ENVIRONMENT,
                       f"CNI_NETNS {inv.netns} is not a network namespace",
                       msg="invalid environment variables: CNI_NETNS")
    return fd


def _fabric_gone(nc: NetConf) -> bool:
    """No agent state next to the socket: the fabric was removed from this node."""
    return not os.path.exists(os.path.join(os.path.dirname(nc.socket), "agent.json"))


def _best_effort(inv: Invocation, nc: NetConf, request: dict[str, Any], err: IO[str],
                 fd: int | None = None) -> Any:
    """DEL / GC: succeed when nothing of ours can exist (see the module doc)."""
    try:
        return _agent(inv, nc, request, fd)
    except CNIError as exc:
        cause = exc.__cause__
        nobody = isinstance(cause, AgentUnreachable) and cause.reason in ("missing", "refused")
        if nobody and _fabric_gone(nc):
            err.write(f"fabric-cni: {inv.verb}: no agent and no agent state next to "
                      f"{nc.socket}; nothing to release\n")
            return None
        if isinstance(cause, FabricError) and _network_unknown(cause):
            err.write(f"fabric-cni: {inv.verb}: {cause.message}; nothing to release\n")
            return None
        raise


def _attachment(inv: Invocation) -> dict[str, Any]:
    return {"container_id": inv.container_id, "ifname": inv.ifname, "netns": inv.netns}


def cmd_add(inv: Invocation, nc: NetConf, err: IO[str]) -> dict[str, Any]:
    prev = normalize(nc.prev_result) if nc.prev_result is not None else None
    if prev is not None and find_interface(prev, inv.ifname, inv.netns) is not None:
        raise CNIError(codes.INTERFACE_EXISTS,
                       f"prevResult already lists {inv.ifname} in {inv.netns}; a chained "
                       "plugin created it, so netfabric cannot")
    request = {
        "op": "cni.add", **_attachment(inv),
        "pod_name": inv.args.get("K8S_POD_NAME", ""),
        "pod_namespace": nc.pod_namespace or inv.args.get("K8S_POD_NAMESPACE", ""),
        "labels": nc.labels,
    }
    ips = static_ips(nc, inv.args)
    if ips:
        request["ips"] = ips
    if nc.default_route:
        request["default_route"] = True
    fd = open_netns(inv, required=True)
    try:
        answer = _agent(inv, nc, request, fd)
    finally:
        if fd is not None:
            os.close(fd)
    try:
        ours = normalize(answer, "agent result")
    except CNIError as exc:
        raise CNIError(codes.AGENT_FAILURE, f"the agent answered a malformed result: "
                       f"{exc.details}") from exc
    if find_interface(ours, inv.ifname, inv.netns) is None:
        raise CNIError(codes.AGENT_FAILURE, f"the agent's result lists no {inv.ifname} in "
                       f"{inv.netns}: {dumps(answer)[:200]}")
    ours["dns"] = {**nc.dns, **ours["dns"]}
    return to_version(chain(prev, ours), nc.cni_version)


def cmd_del(inv: Invocation, nc: NetConf, err: IO[str]) -> None:
    fd = open_netns(inv, required=False)  # gone or odd: the agent's record decides
    try:
        _best_effort(inv, nc, {"op": "cni.del", **_attachment(inv)}, err, fd)
    finally:
        if fd is not None:
            os.close(fd)


def cmd_check(inv: Invocation, nc: NetConf, err: IO[str]) -> None:
    if nc.prev_result is None:
        raise CNIError(codes.INVALID_NETWORK_CONFIG, "CHECK needs prevResult, the result of "
                       "the attachment's ADD", msg="invalid network configuration: prevResult")
    prev = normalize(nc.prev_result)
    index = find_interface(prev, inv.ifname, inv.netns)
    if index is None:
        raise CNIError(codes.INVALID_NETWORK_CONFIG,
                       f"prevResult lists no interface {inv.ifname} in sandbox {inv.netns}",
                       msg="invalid network configuration: prevResult.interfaces")
    ips = interface_ips(prev, index)
    if not ips:
        raise CNIError(codes.INVALID_NETWORK_CONFIG,
                       f"prevResult assigns no address to {inv.ifname}",
                       msg="invalid network configuration: prevResult.ips")
    iface = prev["interfaces"][index]
    expected = {"ips": [ip["address"] for ip in ips]}
    if iface.get("mac"):
        expected["mac"] = iface["mac"]
    fd = open_netns(inv, required=True)
    try:
        _agent(inv, nc, {"op": "cni.check", **_attachment(inv), "expected": expected}, fd)
    finally:
        if fd is not None:
            os.close(fd)


def cmd_status(inv: Invocation, nc: NetConf, err: IO[str]) -> None:
    _agent(inv, nc, {"op": "cni.status"})


def cmd_gc(inv: Invocation, nc: NetConf, err: IO[str]) -> None:
    field = "cni.dev/valid-attachments"
    valid = nc.raw.get(field)
    if valid is None:  # never read a missing list as "nothing is valid"
        raise CNIError(codes.INVALID_NETWORK_CONFIG, f"GC needs {field}",
                       msg=f"invalid network configuration: {field}")
    if not isinstance(valid, list):
        raise CNIError(codes.INVALID_NETWORK_CONFIG, f"{field} must be a list",
                       msg=f"invalid network configuration: {field}")
    attachments = []
    for i, item in enumerate(valid):
        if not (isinstance(item, dict) and isinstance(item.get("containerID"), str)
                and isinstance(item.get("ifname"), str)):
            raise CNIError(codes.INVALID_NETWORK_CONFIG,
                           f"{field}[{i}] must be {{\"containerID\": str, \"ifname\": str}}",
                           msg=f"invalid network configuration: {field}")
        attachments.append({"container_id": item["containerID"], "ifname": item["ifname"]})
    answer = _best_effort(inv, nc, {"op": "cni.gc", "valid": attachments}, err)
    released = (answer or {}).get("released") if isinstance(answer, dict) else None
    if released:
        err.write(f"fabric-cni: GC released {len(released)}: {', '.join(map(str, released))}\n")


_HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status,
             "GC": cmd_gc}


def _version_result(stdin: IO[bytes]) -> dict[str, Any]:
    """VERSION: echo the input's cniVersion if it is a version, else the latest."""
    version = LATEST_VERSION
    try:
        if not stdin.isatty():
            conf = loads(stdin.read() or b"{}")
            given = conf.get("cniVersion") if isinstance(conf, dict) else None
            if isinstance(given, str):
                parse_version(given)
                version = given
    except (OSError, ValueError):  # VERSION is a probe: stdin is optional
        pass
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _read_config(stdin: IO[bytes]) -> Any:
    try:
        data = stdin.read()
    except (OSError, ValueError) as exc:
        raise CNIError(codes.IO_FAILURE, f"reading the config from stdin failed: {exc}") from exc
    if not data or not data.strip():
        raise CNIError(codes.DECODING_FAILURE, "stdin is empty; the runtime must pass the "
                       "plugin config as JSON on stdin")
    try:
        return loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CNIError(codes.DECODING_FAILURE, f"the config on stdin is not UTF-8: {exc}") \
            from exc
    except ValueError as exc:
        raise CNIError(codes.DECODING_FAILURE, f"the config on stdin is not JSON: {exc}") \
            from exc


def _log(environ: Any, entry: dict[str, Any]) -> None:
    """Append one JSON line to $FABRIC_CNI_LOG, if set (call timing for the lab/bench)."""
    path = environ.get("FABRIC_CNI_LOG")
    if path:
        try:
            with open(path, "a") as fh:
                fh.write(dumps(entry) + "\n")
        except OSError:
            pass


def run(environ: Any, stdin: IO[bytes], stdout: IO[str], stderr: IO[str],
        local: Any = None) -> int:
    """One plugin invocation; returns the exit status. Never raises for bad input.

    ``local``: run inside the agent for a native forwarder (``cni.exec``): an object with
    ``call(request, fd)`` (the agent's own dispatch), ``serves(socket_path)`` (a config
    naming another agent's socket is sent there) and ``netns_fd`` (the namespace the
    forwarder opened, or None)."""
    started = time.monotonic()
    version = LATEST_VERSION
    inv: Invocation | None = None
    code = 0
    try:
        verb = environ.get("CNI_COMMAND", "")
        if verb == "VERSION":
            read_invocation(environ)
            stdout.write(dumps(_version_result(stdin)) + "\n")
            return 0
        if not verb:
            inv = read_invocation(environ)  # raises: says CNI_COMMAND is missing
        conf = _read_config(stdin)  # first, so even an error in CNI_* echoes its version
        given = conf.get("cniVersion") if isinstance(conf, dict) else None
        if given in SUPPORTED_VERSIONS:
            version = given
        inv = read_invocation(environ, check_netns=local is None)
        inv.local = local
        nc = parse_netconf(conf, inv.verb, environ)
        result = _HANDLERS[inv.verb](inv, nc, stderr)
        if result is not None:
            stdout.write(dumps(result) + "\n")
        return 0
    except CNIError as exc:
        code = exc.code
        stdout.write(dumps(exc.result(version)) + "\n")
        if not environ.get("CNI_COMMAND"):  # run by hand: say what this is
            stderr.write("fabric-cni: netfabric CNI plugin; CNI protocol versions supported: "
                         f"{', '.join(SUPPORTED_VERSIONS)}\n")
        return 1
    except Exception as exc:  # a bug: still answer in the protocol, never a bare traceback
        code = codes.AGENT_FAILURE
        err = CNIError(code, f"internal error in fabric-cni: {type(exc).__name__}: {exc}")
        stdout.write(dumps(err.result(version)) + "\n")
        return 1
    finally:
        if inv is not None and inv.verb != "VERSION":
            _log(environ, {"verb": inv.verb, "container_id": inv.container_id,
                           "ifname": inv.ifname, "code": code,
                           "ms": round((time.monotonic() - started) * 1000, 2)})


def main() -> int:
    return run(os.environ, sys.stdin.buffer, sys.stdout, sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
