"""The lab's underlay: switch namespace with one bridge per segment, a router
namespace joining segments, host namespaces wired to the bridges, and etcd."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fabric.lab.netns import LabError, add_ns, add_veth, ip_batch, run, sysctl
from fabric.lab.procs import ProcRecord, spawn
from fabric.lab.topology import ETCD_IP, ETCD_PORT, HostSpec, Topology, router_ns, switch_ns

__all__ = ["build_switch", "build_host", "start_etcd", "etcd_url", "wait_tcp", "wait_etcd"]


def build_switch(topo: Topology) -> list[str]:
    """Switch and router namespaces; returns the namespaces created."""
    sw = switch_ns(topo.name)
    created = [sw]
    add_ns(sw)
    cmds = []
    for s in range(topo.segments):
        cmds += [f"link add br{s} mtu {topo.mtu} type bridge mcast_snooping 0 stp_state 0",
                 f"link set br{s} up"]
    cmds.append(f"addr add {ETCD_IP}/24 dev br0")  # etcd / BIRD address on segment 0
    cmds.append("route add default via 198.18.0.1")
    # the router: 198.18.S.1 on every segment, every host's default gateway (also with one
    # segment: real hosts have a default route, and proxy-ARP style backends rely on one)
    rt = router_ns(topo.name)
    add_ns(rt)
    created.append(rt)
    sysctl(rt, "net.ipv4.ip_forward", 1)
    rcmds = []
    for s in range(topo.segments):
        add_veth(rt, f"s{s}", sw, f"rt{s}", topo.mtu)
        rcmds += [f"addr add 198.18.{s}.1/24 dev s{s}", f"link set s{s} up"]
        cmds.insert(2 * topo.segments, f"link set rt{s} master br{s} up")
    ip_batch(rt, rcmds)
    ip_batch(sw, cmds)
    _no_bridge_netfilter(sw)
    return created


def _no_bridge_netfilter(ns: str) -> None:
    """A switch does not filter: keep br_netfilter (when loaded) off the underlay bridges."""
    keys = [f"/proc/sys/net/bridge/bridge-nf-call-{k}" for k in ("iptables", "ip6tables",
                                                                "arptables")]
    run(["sh", "-c", "; ".join(f"[ ! -e {k} ] || echo 0 > {k}" for k in keys)], ns=ns)


def build_host(topo: Topology, host: HostSpec) -> None:
    """Host namespace with eth0 on its segment's bridge, lo up, forwarding on."""
    sw = switch_ns(topo.name)
    add_ns(host.ns)
    add_veth(host.ns, "eth0", sw, host.name, topo.mtu)
    ip_batch(sw, [f"link set {host.name} master br{host.segment} up"])
    cmds = [f"addr add {host.address} dev eth0", "link set eth0 up",
            f"route add default via {host.gateway}"]
    ip_batch(host.ns, cmds)
    sysctl(host.ns, "net.ipv4.ip_forward", 1)


def etcd_url() -> str:
    return f"http://{ETCD_IP}:{ETCD_PORT}"


def wait_tcp(ns: str, host: str, port: int, timeout: float) -> None:
    """Wait until ``host:port`` accepts TCP connections from inside ``ns``."""
    code = ("import socket,sys,time\n"
            f"end=time.time()+{timeout}\n"
            "while time.time()<end:\n"
            "    try:\n"
            f"        socket.create_connection(('{host}',{port}),1).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.1)\n"
            "sys.exit(1)\n")
    proc = run(["python3", "-c", code], ns=ns, check=False, timeout=timeout + 10)
    if proc.returncode != 0:
        raise LabError(f"{host}:{port} did not answer within {timeout}s in {ns}")


def start_etcd(topo: Topology, state: Path) -> tuple[Any, ProcRecord]:
    """Real etcd in the switch namespace on 198.18.0.2; returns (Popen handle, record)."""
    sw = switch_ns(topo.name)
    data = state / "etcd"
    marker = f"{state}/"
    peer = f"http://{ETCD_IP}:2380"
    argv = ["etcd", "--name", "sw", "--data-dir", str(data),
            "--listen-client-urls", etcd_url(), "--advertise-client-urls", etcd_url(),
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"sw={peer}", "--log-level", "warn"]
    proc, rec = spawn("etcd", sw, argv, state / "etcd.log", marker)
    try:
        wait_etcd(sw, 20, proc)
    except LabError:
        proc.kill()
        proc.wait()
        raise
    return proc, rec


def wait_etcd(sw: str, timeout: float, proc: Any = None) -> None:
    """Wait until the lab's etcd answers TCP and reports healthy (LabError otherwise)."""
    wait_tcp(sw, str(ETCD_IP), ETCD_PORT, timeout)
    # the client port opens before etcd serves; wait for health too
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = run(["etcdctl", "--endpoints", etcd_url(), "--command-timeout", "2s",
                   "endpoint", "health"], ns=sw, check=False,
                  env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        if out.returncode == 0:
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise LabError(f"etcd did not become healthy within {timeout}s; see its log in the lab's "
                   "state directory")
