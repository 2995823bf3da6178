"""Namespace helpers for functional tests (each test owns its namespaces by prefix)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def sh(*args: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


@contextmanager
def namespaces(prefix: str) -> Iterator[str]:
    """Yield a unique prefix; delete every namespace starting with it afterwards."""
    tag = f"{prefix}{secrets.token_hex(2)}"
    try:
        yield tag
    finally:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(tag):
                subprocess.run(["ip", "netns", "del", name], check=False)


def add_ns(name: str) -> None:
    sh("ip", "netns", "add", name)
    sh("ip", "link", "set", "lo", "up", ns=name)


def wire(switch: str, bridge: str, host: str, address: str, peer_name: str) -> None:
    """veth from host's eth0 to the switch namespace's bridge."""
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", peer_name, ns=host)
    sh("ip", "link", "set", peer_name, "netns", switch, ns=host)
    sh("ip", "link", "set", peer_name, "master", bridge, "up", ns=switch)
    sh("ip", "addr", "add", address, "dev", "eth0", ns=host)
    sh("ip", "link", "set", "eth0", "up", ns=host)


def ping(ns: str, dst: str) -> bool:
    """One ping from namespace ``ns`` (1 s wait): whether ``dst`` answered."""
    return sh("ping", "-c", "1", "-W", "1", dst, ns=ns, check=False).returncode == 0


def transfer(src_ns: str, dst_ns: str, dst: str, size: int) -> None:
    """Send ``size`` random bytes from ``src_ns`` to ``dst``:5201 in ``dst_ns``; compare digests."""
    recv = (
        "import hashlib,socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
        f"socket.SO_REUSEADDR,1);s.bind(('{dst}',5201));s.listen(1);c,_=s.accept();"
        "h=hashlib.sha256();n=0\nwhile True:\n d=c.recv(1<<16)\n if not d: break\n"
        " h.update(d);n+=len(d)\nprint(n,h.hexdigest())"
    )
    srv = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", recv],
                           stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.4)
        send = (
            f"import hashlib,os,socket;d=os.urandom({size});s=socket.create_connection("
            f"('{dst}',5201),timeout=30);s.sendall(d);s.close();"
            "print(len(d),hashlib.sha256(d).hexdigest())"
        )
        out = sh(sys.executable, "-c", send, ns=src_ns).stdout.strip()
        got, _ = srv.communicate(timeout=60)
        assert got.strip() == out and out.startswith(str(size))
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
