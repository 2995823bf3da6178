"""The backend against the real kernel: a node namespace with a veth as the parent, two
pod namespaces. Needs root; every namespace is named after this test and removed by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

PREFIX = f"nfxmv{os.getpid() % 100000}"
NODE, POD1, POD2, PEER = (f"{PREFIX}{s}" for s in ("n", "a", "b", "s"))

# Runs inside the node namespace: what the agent would do for two pods.
SCRIPT = textwrap.dedent("""
    import json, sys
    from ipaddress import IPv4Address, IPv4Network
    from pathlib import Path
    from fabric.api import Allocation, Handle, NetworkContext, NetworkSpec, Node, Workload
    from fabric.errors import BackendError
    from fabric_example_macvlan import MacvlanBackend

    spec = NetworkSpec("mv", IPv4Network("10.70.0.0/16"), "macvlan")
    b = MacvlanBackend(NetworkContext(spec, Node("n", IPv4Address("198.18.9.1"), "up0", 1500),
                                      Path(sys.argv[1])))
    b.start((IPv4Network("10.70.1.0/24"),))
    out = {}
    for name, ip in (("a", "10.70.1.2"), ("b", "10.70.1.3")):
        wl = Workload(name, "eth0", f"/run/netns/{sys.argv[2]}{name}")
        alloc = Allocation(Handle(name, "eth0"), IPv4Address(ip), IPv4Network("10.70.1.0/24"))
        ep = b.attach(wl, alloc)
        again = b.attach(wl, alloc)  # an ADD retried: the same endpoint
        b.check(wl, alloc)
        out[name] = {"addresses": [str(a) for a in ep.addresses], "same": ep == again,
                     "mac": ep.mac, "host": ep.host_ifname}
    wrong = Allocation(Handle("a", "eth0"), IPv4Address("10.70.1.9"), IPv4Network("10.70.1.0/24"))
    try:
        b.attach(Workload("a", "eth0", f"/run/netns/{sys.argv[2]}a"), wrong)
    except BackendError as exc:
        out["taken"] = exc.field
    print(json.dumps(out))
""")


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@pytest.fixture
def namespaces(tmp_path) -> Iterator[None]:
    try:
        for ns in (NODE, POD1, POD2, PEER):
            _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", NODE, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
            "netns", PEER)
        _sh("ip", "-n", NODE, "link", "set", "up0", "up")
        _sh("ip", "-n", PEER, "link", "set", "up1", "up")  # carrier for the parent
        yield
    finally:
        for ns in (POD1, POD2, NODE, PEER):
            _sh("ip", "netns", "del", ns, check=False)


def test_attach_check_detach_and_same_node_ping(namespaces, tmp_path) -> None:
    run = _sh("ip", "netns", "exec", NODE, sys.executable, "-c", SCRIPT, str(tmp_path), PREFIX,
              check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["a"]["addresses"] == ["10.70.1.2/16"] and out["a"]["same"]
    assert out["b"]["addresses"] == ["10.70.1.3/16"] and out["a"]["host"] == "up0"
    assert out["taken"] == "ifname"  # another address on an existing eth0: CNI code 100
    ping = _sh("ip", "netns", "exec", POD1, "ping", "-c1", "-W2", "10.70.1.3", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr  # bridge mode: same-node pods talk

    detach = textwrap.dedent(f"""
        import sys
        from ipaddress import IPv4Address, IPv4Network
        from pathlib import Path
        from fabric.api import NetworkContext, NetworkSpec, Node, Workload
        from fabric_example_macvlan import MacvlanBackend
        spec = NetworkSpec("mv", IPv4Network("10.70.0.0/16"), "macvlan")
        b = MacvlanBackend(NetworkContext(spec, Node("n", IPv4Address("198.18.9.1"), "up0",
                                          1500), Path("{tmp_path}")))
        wl = Workload("a", "eth0", "/run/netns/{POD1}")
        b.detach(wl); b.detach(wl)  # idempotent
        b.detach(Workload("x", "eth0", "/run/netns/{PREFIX}gone"))  # a missing netns is fine
    """)
    run = _sh("ip", "netns", "exec", NODE, sys.executable, "-c", detach, check=False)
    assert run.returncode == 0, run.stderr
    assert "eth0" not in _sh("ip", "-n", POD1, "-br", "link").stdout
    assert not os.path.exists(f"/run/netns/{PREFIX}gone")  # and was not created
