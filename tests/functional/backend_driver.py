"""Drive one backend inside the current (host) namespace from JSON lines on stdin.

``ip netns exec HOST python backend_driver.py`` plays the agent's role without the IPAM, so
the kernel programming (and a backend's own control plane, e.g. calico-bgp's exabgp) is
tested alone. Commands: ``init`` (prepare + start with ``chunk`` or ``chunks``), ``peer`` (a
node appears / leaves), ``chunks`` (our chunks changed), ``attach`` / ``detach`` (a pod),
``status``, ``stop``, ``teardown``. Each gets one answer line: ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": ..., "kind": ...}``. End of input stops the backend.
"""

from __future__ import annotations

import json
import logging
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from fabric.api import (
    Allocation,
    Backend,
    NetworkContext,
    NetworkSpec,
    Node,
    Peer,
    PeerEvent,
    Workload,
)
from fabric.errors import FabricError
from fabric.plugins import load_plugin


def _chunks(cmd: dict[str, Any]) -> tuple[IPv4Network, ...]:
    given = cmd["chunks"] if "chunks" in cmd else [cmd["chunk"]] if "chunk" in cmd else []
    return tuple(IPv4Network(c) for c in given)


def _init(cmd: dict[str, Any]) -> tuple[Backend, Any]:
    extra = {"subnet_len": cmd["subnet_len"]} if "subnet_len" in cmd else {}
    spec = NetworkSpec(name=cmd.get("net", "pods"), cidr=IPv4Network(cmd["cidr"]),
                       backend=cmd["backend"], backend_config=cmd.get("config", {}), **extra)
    node = Node(cmd["node"], IPv4Address(cmd["ip"]), cmd.get("iface", "eth0"),
                cmd.get("mtu", 1500))
    ctx = NetworkContext(spec=spec, node=node, state_dir=Path(cmd["state"]),
                         log=logging.getLogger(f"driver.{cmd['node']}"))
    ctx.state_dir.mkdir(parents=True, exist_ok=True)
    backend = load_plugin("backend", cmd["backend"])(ctx)
    data = backend.prepare()
    backend.start(_chunks(cmd))
    return backend, data


def _handle(backend: Backend, cmd: dict[str, Any]) -> Any:
    op = cmd["op"]
    if op == "peer":
        peer = Peer(cmd["name"], IPv4Address(cmd["ip"]), _chunks(cmd),
                    backend.ctx.spec.backend, cmd.get("data", {}))
        backend.peers_changed([PeerEvent(cmd.get("kind", "added"), peer)])
    elif op == "chunks":
        backend.chunks_changed(_chunks(cmd))
    elif op == "attach":
        wl = Workload(cmd["cid"], "eth0", cmd["netns"])
        alloc = Allocation(wl.handle, IPv4Address(cmd["pod_ip"]), IPv4Network(cmd["chunk"]))
        ep = backend.attach(wl, alloc)
        backend.check(wl, alloc)
        return {"host_ifname": ep.host_ifname, "mtu": ep.mtu, "mac": ep.mac}
    elif op == "detach":
        backend.detach(Workload(cmd["cid"], "eth0", cmd["netns"]))
    elif op == "status":
        return backend.status()
    elif op == "stop":
        backend.stop()
    elif op == "teardown":
        backend.teardown()
    else:
        raise FabricError(f"unknown op {op!r}")
    return None


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    backend: Backend | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "init":
                backend, out = _init(cmd)
            elif backend is None:
                raise FabricError("no backend: init first (or init failed)")
            else:
                out = _handle(backend, cmd)
            print(json.dumps({"ok": True, "result": out}, default=str), flush=True)
        except FabricError as exc:
            print(json.dumps({"ok": False, "error": str(exc), "kind": type(exc).__name__}),
                  flush=True)
    if backend is not None:
        backend.stop()


if __name__ == "__main__":
    main()
