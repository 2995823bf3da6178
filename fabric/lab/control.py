"""Fault injection on a running lab (a mixin of :class:`fabric.lab.Lab`).

``restart(name)`` ends a recorded process (pid, start time and marker checked) and starts
it again with the command line recorded when it was first started; ``pause`` / ``resume``
SIGSTOP / SIGCONT it (an outage that keeps sockets open); ``block`` / ``unblock`` drop
underlay traffic between two hosts in the switch (see :mod:`fabric.lab.blocks`).
Names: ``etcd``, a host (``h3``: its agent) or any recorded role (``bird``).
"""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, NotFound
from fabric.lab import blocks as nft
from fabric.lab.procs import ProcRecord, is_alive, pause, resume, spawn, stop
from fabric.lab.underlay import wait_etcd

__all__ = ["ControlMixin"]

_UNDERLAY = IPv4Network("198.18.0.0/15")


class ControlMixin:
    """Needs the lab's process records, hosts, pods and start helpers."""

    procs: dict[str, ProcRecord]
    hosts: dict[str, Any]
    pods: dict[str, Any]
    marker: str
    _popen: dict[str, subprocess.Popen]
    _etcd_handle: Any

    # provided by Lab
    topo: Any
    switch_ns: str

    def target(self, name: str) -> tuple[str, IPv4Address]:
        raise NotImplementedError

    def _record(self, rec: ProcRecord) -> None:
        raise NotImplementedError

    def _start_agent(self, host: Any) -> ProcRecord:
        raise NotImplementedError

    def _wait_agent(self, host: Any) -> dict[str, Any]:
        raise NotImplementedError

    # -- processes --
    def role(self, name: str) -> str:
        """The recorded role ``name`` means: ``h3`` -> ``agent:h3``, ``etcd``, ``bird``..."""
        for role in (f"agent:{name}", name):
            if role in self.procs:
                return role
        raise NotFound(f"no process {name!r} in lab {self.topo.name}",
                       fix="known: " + ", ".join(r.removeprefix("agent:") for r in self.procs))

    def stop_process(self, name: str, *, kill9: bool = False) -> bool:
        """End the process (SIGTERM, or SIGKILL with ``kill9``); it stays recorded so
        :meth:`start_process` / :meth:`restart` can start it again. False if not running."""
        role = self.role(name)
        popen = self._popen.pop(role, None)
        if role == "etcd" and self._etcd_handle is not None:
            handle, self._etcd_handle = self._etcd_handle, None
            if popen is None:  # reap the process object we hold (Popen or an EtcdServer's)
                popen = handle if isinstance(handle, subprocess.Popen) else getattr(
                    handle, "_proc", None)
        return stop(self.procs[role], kill9=kill9, proc=popen)

    def start_process(self, name: str, *, timeout: float = 60) -> ProcRecord:
        """Start a stopped process again with its recorded command line; waits until an
        agent is ready or etcd is healthy."""
        role = self.role(name)
        old = self.procs[role]
        if is_alive(old):
            raise ConfigError(f"{role} is running (pid {old.pid})",
                              fix=f"use restart {name} to end it first")
        host = self.hosts.get(role.removeprefix("agent:")) if role.startswith("agent:") else None
        if not old.argv and host is not None:  # a record from before argv was kept
            rec = self._start_agent(host)
        elif not old.argv:
            raise ConfigError(f"{role} has no recorded command line; it cannot be restarted")
        else:
            log = Path(old.log) if old.log else Path(self.marker) / f"{role.replace(':', '-')}.log"
            proc, rec = spawn(role, old.ns or None, old.argv, log, self.marker)
            self._popen[role] = proc
            self._record(rec)
        if host is not None:
            self._wait_agent(host)
        elif role == "etcd":
            wait_etcd(rec.ns, timeout, self._popen.get(role))
        return rec

    def restart(self, name: str, *, kill9: bool = False, timeout: float = 60) -> ProcRecord:
        """End ``name`` (``etcd``, ``h3``...) and start it again with its recorded command
        line, waiting until it serves. Returns the new record."""
        self.stop_process(name, kill9=kill9)
        return self.start_process(name, timeout=timeout)

    def pause(self, name: str) -> ProcRecord:
        """SIGSTOP ``name``: it stops answering but keeps its sockets (a hung server)."""
        rec = self.procs[self.role(name)]
        pause(rec)
        return rec

    def resume(self, name: str) -> ProcRecord:
        """SIGCONT a process paused with :meth:`pause`."""
        rec = self.procs[self.role(name)]
        resume(rec)
        return rec

    # -- underlay partitions --
    def _underlay_ip(self, name: str) -> IPv4Address:
        if name in self.pods:
            raise ConfigError(f"{name} is a pod; blocks act on the underlay",
                              fix="name hosts (h1), sw (etcd) or rt")
        try:
            ip = IPv4Address(name)
        except ValueError:
            _, ip = self.target(name)
        if ip not in _UNDERLAY:
            raise ConfigError(f"{name} ({ip}) is not on the lab's underlay {_UNDERLAY}")
        return ip

    def block(self, a: str, b: str, proto: str | None = None,
              port: int | None = None) -> nft.Block:
        """Drop underlay traffic between ``a`` and ``b`` (hosts, ``sw``, ``rt``) in both
        directions; only ``proto`` (tcp/udp/icmp) and/or ``port`` when given."""
        blk = nft.Block.make(a, b, proto, port)
        ips = (self._underlay_ip(blk.a), self._underlay_ip(blk.b))
        nft.add_block(self.switch_ns, self.topo.name, blk, ips)
        return blk

    def unblock(self, a: str, b: str, proto: str | None = None,
                port: int | None = None) -> nft.Block:
        """Remove exactly the block made with the same arguments (NotFound otherwise)."""
        blk = nft.Block.make(a, b, proto, port)
        nft.remove_block(self.switch_ns, self.topo.name, blk)
        return blk

    def blocks(self) -> list[nft.Block]:
        """Blocks in force, read from the switch."""
        return nft.list_blocks(self.switch_ns, self.topo.name)
