"""Drive one backend inside the current (host) namespace from JSON commands on stdin.

Used by test_backends_kernel.py through `ip netns exec HOST python backend_driver.py`:
it is the agent's role without the IPAM, so the kernel programming is tested alone.
"""

from __future__ import annotations

import json
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from fabric.api import Allocation, NetworkContext, NetworkSpec, Node, Peer, PeerEvent, Workload
from fabric.errors import FabricError
from fabric.plugins import load_plugin


def main() -> None:
    backend = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            out = None
            if cmd["op"] == "init":
                spec = NetworkSpec(name=cmd["net"], cidr=IPv4Network(cmd["cidr"]),
                                   backend=cmd["backend"], backend_config=cmd.get("config", {}))
                node = Node(cmd["node"], IPv4Address(cmd["ip"]), "eth0", 1500)
                ctx = NetworkContext(spec=spec, node=node, state_dir=Path(cmd["state"]))
                ctx.state_dir.mkdir(parents=True, exist_ok=True)
                backend = load_plugin("backend", cmd["backend"])(ctx)
                out = backend.prepare()
                backend.start((IPv4Network(cmd["chunk"]),))
            elif cmd["op"] == "peer":
                peer = Peer(cmd["name"], IPv4Address(cmd["ip"]), (IPv4Network(cmd["chunk"]),),
                            cmd["backend"], cmd.get("data", {}))
                backend.peers_changed([PeerEvent(cmd.get("kind", "added"), peer)])
            elif cmd["op"] == "attach":
                wl = Workload(cmd["cid"], "eth0", cmd["netns"])
                alloc = Allocation(wl.handle, IPv4Address(cmd["pod_ip"]), IPv4Network(cmd["chunk"]))
                ep = backend.attach(wl, alloc)
                backend.check(wl, alloc)
                out = {"host_ifname": ep.host_ifname, "mtu": ep.mtu}
            elif cmd["op"] == "detach":
                backend.detach(Workload(cmd["cid"], "eth0", cmd["netns"]))
            elif cmd["op"] == "status":
                out = backend.status()
            elif cmd["op"] == "teardown":
                backend.teardown()
            print(json.dumps({"ok": True, "result": out}, default=str), flush=True)
        except FabricError as exc:
            print(json.dumps({"ok": False, "error": str(exc)}), flush=True)


if __name__ == "__main__":
    main()
