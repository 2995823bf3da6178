"""The running lab: ``with Lab(topo) as lab: lab.ping_all()``.

Every process started is recorded in ``/run/netfabric-lab/NAME/lab.json`` before
the next step, so :func:`fabric.lab.cleanup.teardown` can remove the lab from any
process, even if this object is abandoned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, NotFound
from fabric.lab import agents
from fabric.lab.cleanup import load_state, save_state, teardown
from fabric.lab.control import ControlMixin
from fabric.lab.netns import LabError, add_ns, list_ns, run
from fabric.lab.procs import ProcRecord, is_alive, is_paused, spawn, stop
from fabric.lab.results import (
    DownReport,
    HostInfo,
    PodInfo,
)
from fabric.lab.topology import MAX_HOSTS, STATE_ROOT, Topology, switch_ns
from fabric.lab.traffic import TrafficMixin
from fabric.lab.underlay import build_host, build_switch, etcd_url, start_etcd

__all__ = ["Lab", "Hook"]

log = logging.getLogger("fabric.lab")
_POD_NAME = re.compile(r"^[a-z0-9]{1,12}$")
_RESERVED = re.compile(r"^(sw|rt|h\d+)$")

Hook = Callable[["Lab"], None]


class Lab(TrafficMixin, ControlMixin):
    """A running :class:`Topology`. ``hooks`` run after the underlay and etcd are up and
    before any agent starts (e.g. BIRD in :meth:`switch_ns`); they may call :meth:`spawn`
    so their processes are recorded and ended by :meth:`down`."""

    def __init__(self, topo: Topology, *, hooks: Sequence[Hook] = (),
                 ready_timeout: float = 60, root: Path = STATE_ROOT,
                 agents: bool = True) -> None:
        self.topo = topo
        self.with_agents = agents  # False: underlay and etcd only (no agents, no pods)
        self.hooks = tuple(hooks)
        self.ready_timeout = ready_timeout
        self.root = root
        self.state_dir = root / topo.name
        self.marker = f"{self.state_dir}/"
        self.hosts: dict[str, HostInfo] = {}
        self.pods: dict[str, PodInfo] = {}
        self.procs: dict[str, ProcRecord] = {}
        self.etcd: str | None = None
        self._popen: dict[str, subprocess.Popen] = {}
        self._etcd_handle: Any = None
        self._next_host = 1

    # -- life cycle --
    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *_exc: object) -> None:
        self.down()

    def up(self) -> Lab:
        name = self.topo.name
        if os.geteuid() != 0:
            raise LabError("the lab needs root: it creates network namespaces",
                           fix="run it as root (e.g. sudo fabric lab up ...)")
        if self.state_dir.exists() or list_ns(self.topo.prefix):
            raise ConfigError(f"lab {name!r} exists already",
                              fix=f"take it down first: fabric lab down --name {name}")
        self._warn_l2()
        self.state_dir.mkdir(parents=True)
        self._save()
        try:
            build_switch(self.topo)
            if self.topo.needs_etcd():
                self._etcd_handle, rec = start_etcd(self.topo, self.state_dir)
                self._record(rec)
                self.etcd = etcd_url()
                self._save()
            for hook in self.hooks:
                hook(self)
            new = [self._add_host_ns() for _ in range(self.topo.hosts)]
            if self.with_agents:
                self._start_agents(new)
                for h in new:
                    self._add_pods(h)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> DownReport:
        """End every process (by recorded pid), delete ``nfl-NAME-*``, remove the state dir."""
        handle, self._etcd_handle = self._etcd_handle, None
        if isinstance(handle, subprocess.Popen):
            self._popen["etcd"] = handle  # reaped below
        report = teardown(self.topo.name, self.root)  # agents first, while etcd still answers
        if handle is not None and not isinstance(handle, subprocess.Popen):
            with contextlib.suppress(Exception):  # an EtcdServer: reap its process object
                handle.__exit__(None, None, None)
        for proc in self._popen.values():
            proc.poll()  # reap our children
        self._popen.clear()
        self.procs.clear()
        return report

    def _warn_l2(self) -> None:
        if self.topo.segments < 2 or not self.with_agents:
            return
        from fabric.plugins import load_plugin

        for b in self.topo.backends:
            try:
                needs_l2 = load_plugin("backend", b).capabilities.needs_l2
            except Exception:  # an unknown backend fails clearly in its agent
                continue
            if needs_l2:
                log.warning("backend %s needs one L2 segment; with %d segments hosts on "
                            "different segments will not reach each other's pods",
                            b, self.topo.segments)

    @classmethod
    def attach(cls, name: str, root: Path = STATE_ROOT) -> Lab:
        """The lab ``name`` another process started (for status, exec, checks)."""
        data = load_state(name, root)
        lab = cls(Topology.from_json(data["topology"]), root=root)
        lab.hosts = {h["name"]: HostInfo.from_json(h) for h in data.get("hosts", [])}
        lab.pods = {p["name"]: PodInfo.from_json(p) for p in data.get("pods", [])}
        lab.procs = {r["role"]: ProcRecord.from_json(r) for r in data.get("procs", [])}
        lab.etcd = data.get("etcd")
        lab._next_host = data.get("next_host", len(lab.hosts) + 1)
        return lab

    # -- processes --
    def spawn(self, role: str, ns: str, argv: Sequence[str]) -> ProcRecord:
        """Start a recorded process in ``ns``; ``argv`` must mention :attr:`state_dir`
        (e.g. its config or log path) so the pid check can recognise it."""
        proc, rec = spawn(role, ns, argv, self.state_dir / f"{role.replace(':', '-')}.log",
                          self.marker)
        self._popen[role] = proc
        self._record(rec)
        return rec

    def _record(self, rec: ProcRecord) -> None:
        self.procs[rec.role] = rec
        self._save()

    def _save(self) -> None:
        save_state(self.state_dir, {
            "topology": self.topo.to_json(),
            "etcd": self.etcd,
            "next_host": self._next_host,
            "hosts": [h.to_json() for h in self.hosts.values()],
            "pods": [p.to_json() for p in self.pods.values()],
            "procs": [r.to_json() for r in self.procs.values()],
        })

    # -- hosts and pods --
    @property
    def switch_ns(self) -> str:
        return switch_ns(self.topo.name)

    def _add_host_ns(self) -> HostInfo:
        index = self._next_host
        if index > MAX_HOSTS:
            raise ConfigError(f"a lab holds at most {MAX_HOSTS} hosts")
        spec = self.topo.host(index)
        sd = self.state_dir / spec.name
        sd.mkdir(parents=True, exist_ok=True)
        host = HostInfo(spec.name, index, spec.ns, spec.segment, spec.address, str(sd),
                        str(sd / "agent.sock"))
        self._next_host += 1
        self.hosts[host.name] = host
        self._save()  # before the namespace exists: teardown finds it by prefix anyway
        build_host(self.topo, spec)
        return host

    def _start_agent(self, host: HostInfo) -> ProcRecord:
        peers = [h.ip for h in self.hosts.values() if h.name != host.name]
        argv = agents.agent_argv(self.topo, host, self.etcd, peers)
        proc, rec = spawn(f"agent:{host.name}", host.ns, argv,
                          Path(host.state_dir) / "agent.log", self.marker)
        self._popen[rec.role] = proc
        self._record(rec)
        return rec

    def _start_agents(self, hosts: Iterable[HostInfo]) -> None:
        hosts = list(hosts)
        for h in hosts:
            self._start_agent(h)
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            list(pool.map(self._wait_agent, hosts))

    def _wait_agent(self, host: HostInfo) -> dict[str, Any]:
        rec = self.procs[f"agent:{host.name}"]
        proc = self._popen.get(rec.role)
        alive = (lambda: proc.poll() is None) if proc else (lambda: is_alive(rec))
        return agents.wait_ready(host, alive, self.ready_timeout, rec.log)

    def _add_pods(self, host: HostInfo, pods: int | None = None) -> None:
        """``pods`` (default ``pods_per_host``) pods on every pod network of ``host``."""
        count = self.topo.pods_per_host if pods is None else pods
        for net in self.topo.pod_networks():
            for m in range(1, count + 1):
                self.add_pod(host.name, self.topo.pod_name(host.name, net, m), network=net)

    def add_pod(self, host: str, name: str | None = None, *, labels: dict[str, str] | None = None,
                namespace: str = "default", network: str = "") -> PodInfo:
        """A pod namespace on ``host``, attached by executing `fabric-cni` ADD."""
        h = self._host(host)
        if name is None:
            n = 1
            while f"{h.name}p{n}" in self.pods:
                n += 1
            name = f"{h.name}p{n}"
        if not _POD_NAME.match(name) or _RESERVED.match(name):
            raise ConfigError(f"pod name {name!r} is invalid",
                              fix="use 1-12 of [a-z0-9], not sw, rt or hN (e.g. h1p3, web1)")
        if name in self.pods:
            raise ConfigError(f"pod {name} exists already")
        ns = f"{self.topo.prefix}{name}"
        add_ns(ns)
        net = network or self.topo.pod_network or self.topo.network_names()[0]
        try:
            pod = agents.cni_add(h, name, ns, net, labels or {"pod": name, "host": h.name},
                                 namespace)
        except BaseException:
            run(["ip", "netns", "del", ns], check=False)
            agents.remove_resolv(ns)
            raise
        self.pods[name] = pod
        self._save()
        return pod

    def remove_pod(self, name: str) -> None:
        """`fabric-cni` DEL, then delete the pod's namespace."""
        pod = self._pod(name)
        agents.cni_del(self._host(pod.host), pod)
        run(["ip", "netns", "del", pod.ns], check=False)
        agents.remove_resolv(pod.ns)
        del self.pods[name]
        self._save()

    def add_host(self, pods: int | None = None) -> HostInfo:
        """A host joining later: underlay, agent (waited for), ``pods`` pods."""
        host = self._add_host_ns()
        if not self.with_agents:
            return host
        self._start_agents([host])
        self._add_pods(host, pods)
        return host

    def restart_agent(self, host: str, *, kill9: bool = True) -> ProcRecord:
        """Kill (-9, or SIGTERM) the host's agent, start it again and wait until ready."""
        h = self._host(host)
        role = f"agent:{h.name}"
        old = self.procs.get(role)
        if old is not None:
            stop(old, kill9=kill9, proc=self._popen.pop(role, None))
        rec = self._start_agent(h)
        self._wait_agent(h)
        return rec

    def _host(self, name: str) -> HostInfo:
        if name not in self.hosts:
            raise NotFound(f"no host {name!r} in lab {self.topo.name}",
                           fix=f"hosts: {', '.join(self.hosts)}")
        return self.hosts[name]

    def _pod(self, name: str) -> PodInfo:
        if name not in self.pods:
            raise NotFound(f"no pod {name!r} in lab {self.topo.name}",
                           fix=f"pods: {', '.join(self.pods)}")
        return self.pods[name]

    def target(self, name: str) -> tuple[str, IPv4Address]:
        """Namespace and address of host or pod ``name`` (``sw`` / ``rt`` too)."""
        if name in self.pods:
            return self.pods[name].ns, self.pods[name].ip
        if name in self.hosts:
            return self.hosts[name].ns, self.hosts[name].ip
        if name in ("sw", "rt"):
            return f"{self.topo.prefix}{name}", IPv4Address("198.18.0.2" if name == "sw"
                                                            else "198.18.0.1")
        raise NotFound(f"no host or pod {name!r} in lab {self.topo.name}",
                       fix=f"known: {', '.join([*self.hosts, *self.pods])}")

    def pods_by_network(self) -> dict[str, dict[str, str]]:
        """Network name -> {pod: address}, every network of the lab (empty ones too)."""
        first = self.topo.pod_network or self.topo.network_names()[0]
        out: dict[str, dict[str, str]] = {n: {} for n in self.topo.network_names()}
        for p in self.pods.values():
            out.setdefault(p.network or first, {})[p.name] = str(p.address)
        return out

    def agent_call(self, host: str, request: dict[str, Any], timeout: float = 30) -> Any:
        return agents.agent_call(self._host(host).socket, request, timeout)

    def status(self) -> dict[str, Any]:
        """Per host: agent pid/alive and its `status` answer (or the error)."""
        out: dict[str, Any] = {"name": self.topo.name, "etcd": self.etcd, "hosts": {},
                               "blocks": [b.to_json() for b in self.blocks()],
                               "procs": {r.role: {"pid": r.pid, "alive": is_alive(r),
                                                  "paused": is_paused(r)}
                                         for r in self.procs.values()},
                               "pods": {p.name: str(p.address) for p in self.pods.values()},
                               "networks": self.pods_by_network()}
        for h in self.hosts.values():
            rec = self.procs.get(f"agent:{h.name}")
            entry: dict[str, Any] = {"ns": h.ns, "ip": str(h.ip), "segment": h.segment,
                                     "pid": rec.pid if rec else None,
                                     "alive": bool(rec and is_alive(rec))}
            try:
                entry["agent"] = self.agent_call(h.name, {"op": "status"}, timeout=5)
            except Exception as exc:  # status must always answer
                entry["error"] = str(exc)
            out["hosts"][h.name] = entry
        return out
