"""Starting `fabric up` in a lab host, talking to it, attaching pods through `fabric-cni`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from fabric.errors import AgentUnavailable, FabricError
from fabric.lab.netns import LabError, run
from fabric.lab.results import HostInfo, PodInfo
from fabric.lab.topology import Topology

__all__ = ["tool", "agent_argv", "expand", "agent_call", "wait_ready", "cni_add", "cni_del",
           "write_resolv", "remove_resolv", "ETC_NETNS"]

# `ip netns exec NS` bind-mounts /etc/netns/NS/<file> over /etc/<file>: a pod's resolver
# config goes there, as a runtime would put it into the container
ETC_NETNS = Path("/etc/netns")


def tool(name: str) -> str:
    """Path of an installed console script, next to this Python first (no pyenv shim)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise LabError(f"{name} is not installed", fix="pip install -e /work/main")
    return found


def expand(value: Any, fmt: dict[str, str]) -> Any:
    """``{node}``, ``{ip}``, ``{lab}``, ``{peers}`` replaced in a string (other braces, as in
    JSON, stay); lists and dicts are expanded item by item."""
    if isinstance(value, str):
        for key, sub in fmt.items():
            value = value.replace("{" + key + "}", sub)
        return value
    if isinstance(value, list | tuple):
        return [expand(v, fmt) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, fmt) for k, v in value.items()}
    return value


def _gossip_backend(backend: str) -> bool:
    """A backend whose default IPAM is the gossip ``ring``: it needs peers, not etcd."""
    from fabric.plugins import load_plugin

    try:
        return load_plugin("backend", backend).default_ipam == "ring"
    except Exception:  # unknown backend: its agent reports that clearly
        return False


def agent_argv(topo: Topology, host: HostInfo, etcd: str | None,
               peers: Sequence[IPv4Address] = ()) -> list[str]:
    """`fabric up` for ``host``. ``peers`` (the other hosts' underlay IPs at start time) fill
    ``{peers}`` (comma-separated) in agent arguments and backend options, e.g. a
    gossip backend's seed list: ``--agent-arg=--peers={peers}``."""
    fmt = {"node": host.name, "ip": str(host.ip), "lab": topo.name,
           "peers": ",".join(str(p) for p in peers)}
    argv = [tool("fabric"), "up", "--state-dir", host.state_dir, "--node-name", host.name,
            "--iface", "eth0"]
    if etcd:
        argv += ["--etcd", etcd]
    names = topo.network_names()
    opts = {b: expand(dict(topo.backend_opts.get(b, {})), fmt) for b in topo.backends}
    gossip = [b for b in topo.backends if _gossip_backend(b)]
    for i, b in enumerate(gossip):  # gossip backends (weave) find each other via the hosts
        opts[b].setdefault("Peers", [str(p) for p in peers])
        # lab rule: no traffic leaves the lab, so weaveDNS forwards nowhere
        opts[b].setdefault("DNSUpstream", "none")
        if i:  # a second weave network on the same hosts needs its own ports
            opts[b].setdefault("MeshPort", 6783 + 10 * i)
            opts[b].setdefault("DataPort", 6783 + 10 * i)
            opts[b].setdefault("FastdpPort", 6784 + 10 * i)
    if len(topo.backends) == 1:
        argv += ["--backend", topo.backends[0], "--network", str(topo.cidr),
                 "--name", names[0], "--subnet-len", str(topo.subnet_len)]
        for key, value in opts[topo.backends[0]].items():
            argv += ["--backend-opt", f"{key}={json.dumps(value)}"]
    else:  # several networks: one agent config file (JSON is YAML)
        nets = [{"name": n, "backend": b, "network": str(topo.network_cidr(i)),
                 "subnetLen": topo.subnet_len, "backendConfig": opts[b]}
                for i, (n, b) in enumerate(zip(names, topo.backends, strict=True))]
        path = Path(host.state_dir) / "lab-networks.json"
        path.write_text(json.dumps({"networks": nets}))
        argv += ["--config", str(path)]
    argv += [expand(a, fmt) for a in topo.agent_args]
    return argv


def agent_call(sock_path: str, request: dict[str, Any], timeout: float = 30) -> Any:
    """One request on the agent's control socket (one JSON line each way)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise AgentUnavailable(f"agent at {sock_path} is not answering: {exc}") from exc
    try:
        answer = json.loads(buf)
    except ValueError as exc:
        raise AgentUnavailable(f"agent at {sock_path} sent no JSON answer") from exc
    if not answer.get("ok"):
        err = answer.get("error") or {}
        raise LabError(f"agent {request.get('op')}: {err.get('kind')}: {err.get('message')}",
                       fix=err.get("fix"))
    return answer.get("result")


def wait_ready(host: HostInfo, proc_alive, timeout: float, log: str) -> dict[str, Any]:
    """Poll `status` until every network is ready; LabError when the agent dies or times out."""
    end = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < end:
        if not proc_alive():
            raise LabError(f"agent on {host.name} exited; last log lines:\n{_tail(log)}")
        try:
            st = agent_call(host.socket, {"op": "status"}, timeout=5)
            nets = st.get("networks") or []
            if nets and all(n.get("ready") for n in nets):
                return st
            last = "; ".join(f"{n.get('name')}: not ready" for n in nets if not n.get("ready"))
        except FabricError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise LabError(f"agent on {host.name} not ready within {timeout}s ({last}); log:\n"
                   f"{_tail(log)}")


def _tail(path: str, lines: int = 60) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _cni_env(command: str, pod_ns: str, cid: str, ifname: str, args: str = "") -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod_ns}",
           "CNI_IFNAME": ifname, "CNI_PATH": str(Path(tool("fabric-cni")).parent),
           "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    if args:
        env["CNI_ARGS"] = args
    return env


def _cni_conf(host: HostInfo, network: str, labels: dict[str, str], namespace: str) -> str:
    return json.dumps({"cniVersion": "1.1.0", "name": "nfl-lab", "type": "fabric-cni",
                       "network": network, "agentSocket": host.socket,
                       "args": {"cni": {"labels": labels, "namespace": namespace}}})


def _cni(host: HostInfo, env: dict[str, str], conf: str) -> dict[str, Any] | None:
    """Execute fabric-cni in the host's namespace, exactly as a runtime would."""
    proc = run([tool("fabric-cni")], ns=host.ns, check=False, input=conf, env=env, timeout=60)
    out = proc.stdout.strip()
    try:
        data = json.loads(out) if out else None
    except ValueError as exc:
        raise LabError(f"fabric-cni {env['CNI_COMMAND']} printed no JSON: {out[:300]} "
                       f"{proc.stderr.strip()[:300]}") from exc
    if proc.returncode != 0:
        msg = data.get("msg") if isinstance(data, dict) else out
        details = data.get("details", "") if isinstance(data, dict) else proc.stderr
        code = data.get("code") if isinstance(data, dict) else None
        raise LabError(f"fabric-cni {env['CNI_COMMAND']} failed (code {code}): {msg} {details}"
                       .strip())
    return data


def cni_add(host: HostInfo, pod: str, pod_ns: str, network: str, labels: dict[str, str],
            namespace: str = "default") -> PodInfo:
    cid = pod_ns
    env = _cni_env("ADD", pod_ns, cid, "eth0",
                   f"K8S_POD_NAME={pod};K8S_POD_NAMESPACE={namespace}")
    result = _cni(host, env, _cni_conf(host, network, labels, namespace)) or {}
    ips = result.get("ips") or []
    if not ips:
        raise LabError(f"fabric-cni ADD for {pod} returned no address: {result}")
    write_resolv(pod_ns, result.get("dns") or {})
    mac = ""
    for i in result.get("interfaces") or []:
        if i.get("sandbox"):
            mac = i.get("mac", "")
    return PodInfo(pod, host.name, pod_ns, IPv4Interface(ips[0]["address"]), cid, "eth0", mac,
                   network, namespace, dict(labels))


def cni_del(host: HostInfo, pod: PodInfo) -> None:
    env = _cni_env("DEL", pod.ns, pod.container_id, pod.ifname)
    _cni(host, env, _cni_conf(host, pod.network, dict(pod.labels), pod.namespace))


def write_resolv(pod_ns: str, dns: dict[str, Any]) -> Path | None:
    """Write the CNI result's ``dns`` as the pod's resolv.conf (what `ip netns exec` shows
    the pod as /etc/resolv.conf); None when the result names no nameserver."""
    servers = [str(s) for s in dns.get("nameservers") or []]
    if not servers:
        return None
    lines = [f"nameserver {s}" for s in servers]
    if dns.get("search"):
        lines.append("search " + " ".join(map(str, dns["search"])))
    if dns.get("domain") and not dns.get("search"):
        lines.append(f"domain {dns['domain']}")
    if dns.get("options"):
        lines.append("options " + " ".join(map(str, dns["options"])))
    path = ETC_NETNS / pod_ns / "resolv.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def remove_resolv(ns: str) -> None:
    """Remove ``/etc/netns/<ns>`` (only a directory the lab names by its namespace)."""
    if not ns.startswith("nfl-") or "/" in ns:
        return
    shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
