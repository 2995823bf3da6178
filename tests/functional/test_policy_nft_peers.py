"""Endpoints shared between nodes through a real etcd (what makes cross-node selectors work)."""

from __future__ import annotations

import secrets
import threading
import time
from ipaddress import IPv4Address

import pytest

from fabric.policy.compile import EndpointInfo
from fabric.policy.peers import EndpointDirectory
from fabric_testplugins.etcd import EtcdServer, etcd_binary

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="etcd is not installed")


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory):
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server.url


def ep(key: str, ip: str, **labels: str) -> EndpointInfo:
    return EndpointInfo(key, (IPv4Address(ip),), "default", tuple(sorted(labels.items())), key)


class Seen:
    def __init__(self) -> None:
        self.remote: dict[str, EndpointInfo] = {}
        self.changed = threading.Event()

    def __call__(self, remote: dict[str, EndpointInfo]) -> None:
        self.remote = remote
        self.changed.set()

    def ips(self) -> set[str]:
        return {str(a) for e in self.remote.values() for a in e.addresses}

    def wait_for(self, want: set[str], timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while self.ips() != want:
            assert time.monotonic() < end, f"saw {self.ips()}, want {want}"
            time.sleep(0.05)


def test_endpoints_flow_between_nodes(etcd_url: str) -> None:
    from fabric.store import connect

    prefix = f"/pol{secrets.token_hex(3)}"
    sa, sb = connect(etcd_url), connect(etcd_url)
    seen_a, seen_b = Seen(), Seen()
    a = EndpointDirectory(sa, prefix, "n1", seen_a)
    b = EndpointDirectory(sb, prefix, "n2", seen_b)
    a.start(set())
    a.publish(ep("c1/eth0", "10.1.0.2", app="web"))
    b.start(set())
    b.publish(ep("c9/eth0", "10.1.1.2", app="db"))
    seen_b.wait_for({"10.1.0.2"})  # listed at start; its own pod is never "remote"
    seen_a.wait_for({"10.1.1.2"})  # arrived through the watch
    a.publish(ep("c2/eth0", "10.1.0.3", app="web"))
    a.publish(ep("c3/eth0", "10.1.0.4", app="web"))
    seen_b.wait_for({"10.1.0.2", "10.1.0.3", "10.1.0.4"})
    assert dict(next(e for e in seen_b.remote.values()
                     if e.key == "c2/eth0").labels) == {"app": "web"}
    a.unpublish("c1/eth0")
    seen_b.wait_for({"10.1.0.3", "10.1.0.4"})
    # n1 restarts knowing only c2: its stale c3 entry goes away for everyone
    a.stop()
    a2 = EndpointDirectory(connect(etcd_url), prefix, "n1", Seen())
    a2.start({"c2/eth0"})
    seen_b.wait_for({"10.1.0.3"})
    for d in (a2, b):
        d.stop()
