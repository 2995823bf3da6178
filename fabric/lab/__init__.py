"""Emulated hosts in network namespaces, each running a real `fabric up`.

    topo = Topology("t1", "vxlan", hosts=3, pods_per_host=2, segments=1)
    with Lab(topo) as lab:                  # underlay, etcd, agents, pods via fabric-cni
        assert lab.ping_all().ok            # PingResult: pairs, failures, summary()
        lab.tcp_check("h1p1", "h2p1")       # TcpResult
        lab.iperf("h1", "h2").gbps          # IperfResult (hosts or pods)
        lab.add_host(); lab.restart_agent("h2", kill9=True)
        lab.add_pod("h1", "web1", labels={"app": "web"}, namespace="shop")
        lab.exec("h1", ["ip", "route"]); lab.agent_call("h1", {"op": "status"})
        lab.restart("etcd"); lab.restart("h3"); lab.pause("etcd"); lab.resume("etcd")
        lab.block("h1", "h2", proto="udp", port=8472); lab.unblock(...); lab.blocks()

``Lab(topo, hooks=[fn])``: ``fn(lab)`` runs once the switch, router and etcd are up
and before any host exists; it may start processes with ``lab.spawn(role, ns, argv)``
(argv must mention ``lab.state_dir``) so they are recorded and ended by ``down``.
``Lab.attach(name)`` returns a lab another process started; ``teardown(name)`` (or
`fabric lab down --name NAME`) removes one from anywhere, also after a crash.
``Lab(topo, agents=False)`` builds only the underlay and etcd.

Names resolve lazily so `fabric` (which imports ``fabric.lab.cli``) starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"Lab": "fabric.lab.lab", "Topology": "fabric.lab.topology",
          "LabError": "fabric.lab.netns", "teardown": "fabric.lab.cleanup",
          **{n: "fabric.lab.results" for n in (
              "HostInfo", "PodInfo", "ExecResult", "PingPair", "PingResult", "TcpResult",
              "IperfResult", "DownReport")}}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
