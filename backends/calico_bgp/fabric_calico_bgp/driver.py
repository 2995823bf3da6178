"""Drive one calico-bgp backend from JSON lines on stdin (for tests and debugging).

``ip netns exec HOST python -m fabric_calico_bgp.driver`` plays the agent
inside an emulated host without the IPAM: ``init`` (prepare + start with a
block), ``peer`` (a node appears / leaves), ``chunks`` (our blocks changed),
``attach`` / ``detach`` (a pod), ``status``, ``stop``, ``teardown``. Each
command gets one JSON answer line: ``{"ok": true, "result": ...}`` or an error.
"""

from __future__ import annotations

import json
import logging
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from fabric.api import Allocation, NetworkContext, NetworkSpec, Node, Peer, PeerEvent, Workload
from fabric.errors import FabricError
from fabric_calico_bgp.backend import CalicoBgpBackend

__all__ = ["main"]


def _handle(backend: CalicoBgpBackend | None, cmd: dict):
    op = cmd["op"]
    if op == "init":
        spec = NetworkSpec(name=cmd.get("net", "pods"), cidr=IPv4Network(cmd["cidr"]),
                           backend="calico-bgp", backend_config=cmd.get("config", {}),
                           subnet_len=26)
        node = Node(cmd["node"], IPv4Address(cmd["ip"]), cmd.get("iface", "eth0"),
                    cmd.get("mtu", 1500))
        ctx = NetworkContext(spec=spec, node=node, state_dir=Path(cmd["state"]),
                             log=logging.getLogger(f"driver.{cmd['node']}"))
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        backend = CalicoBgpBackend(ctx)
        data = backend.prepare()
        backend.start(tuple(IPv4Network(c) for c in cmd.get("chunks", [])))
        return backend, data
    if backend is None:
        raise FabricError("no backend: init first (or init failed)")
    if op == "peer":
        peer = Peer(cmd["name"], IPv4Address(cmd["ip"]),
                    tuple(IPv4Network(c) for c in cmd.get("chunks", [])), "calico-bgp",
                    cmd.get("data", {}))
        backend.peers_changed([PeerEvent(cmd.get("kind", "added"), peer)])
    elif op == "chunks":
        backend.chunks_changed(tuple(IPv4Network(c) for c in cmd["chunks"]))
    elif op == "attach":
        wl = Workload(cmd["cid"], "eth0", cmd["netns"])
        alloc = Allocation(wl.handle, IPv4Address(cmd["pod_ip"]), IPv4Network(cmd["chunk"]))
        ep = backend.attach(wl, alloc)
        backend.check(wl, alloc)
        return backend, {"host_ifname": ep.host_ifname, "mtu": ep.mtu, "mac": ep.mac}
    elif op == "detach":
        backend.detach(Workload(cmd["cid"], "eth0", cmd["netns"]))
    elif op == "status":
        return backend, backend.status()
    elif op == "stop":
        backend.stop()
    elif op == "teardown":
        backend.teardown()
    else:
        raise FabricError(f"unknown op {op!r}")
    return backend, None


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    backend = None
    for line in sys.stdin:
        try:
            backend, out = _handle(backend, json.loads(line))
            print(json.dumps({"ok": True, "result": out}, default=str), flush=True)
        except FabricError as exc:
            print(json.dumps({"ok": False, "error": str(exc), "kind": type(exc).__name__}),
                  flush=True)
    if backend is not None:
        backend.stop()


if __name__ == "__main__":
    main()
