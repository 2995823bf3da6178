"""Helpers for the weave lab tests: status reads, multicast listeners, underlay captures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fabric.lab import Lab

__all__ = ["backend_status", "modes", "Capture", "multicast_roundtrip", "plaintext_seen",
           "wrong_password_peer", "MARKER"]

MARKER = "4e46534543524554"  # "NFSECRET", the pattern ping repeats in its payload


def backend_status(lab: Lab, host: str) -> dict[str, Any]:
    return lab.agent_call(host, {"op": "status"})["networks"][0]["backend_status"]


def modes(lab: Lab, host: str) -> dict[str, str]:
    """{peer nickname: data-path mode} of ``host``'s established mesh connections."""
    conns = backend_status(lab, host)["mesh"]["connections"]
    return {c["nickname"]: c.get("mode", "") for c in conns if c.get("state") == "established"}


class Capture:
    """tcpdump on a host's underlay interface into a file; ``.stop()`` returns the bytes."""

    def __init__(self, ns: str, bpf: str, iface: str = "eth0") -> None:
        fd, self.path = tempfile.mkstemp(prefix="nfcap-", suffix=".pcap")
        os.close(fd)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "--immediate-mode", "-U", "-n", "-s0", "-i",
             iface, "-w", self.path, bpf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # capturing starts when tcpdump says so (seconds on a loaded machine)
        assert self.proc.stderr is not None
        end = time.monotonic() + 20
        while time.monotonic() < end:
            line = self.proc.stderr.readline()
            if not line or "listening on" in line:
                break
        time.sleep(0.2)

    def stop(self) -> bytes:
        time.sleep(0.3)  # the last packets reach tcpdump's buffer
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        data = Path(self.path).read_bytes()
        os.unlink(self.path)
        return data


def plaintext_seen(lab: Lab, src: str, dst: str) -> bool:
    """Ping ``dst`` from ``src`` with the marker payload: is the marker on ``src``'s host's
    underlay (UDP)? Fails the test when the ping itself fails."""
    host = lab.pods[src].host if src in lab.pods else src[:2]
    cap = Capture(lab.target(host)[0], "udp")
    _, ip = lab.target(dst)
    res = lab.exec(src, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-p", MARKER, "-s", "200",
                         str(ip)])
    data = cap.stop()
    assert res.ok, f"{src} -> {dst}: {res.stdout}"
    return bytes.fromhex(MARKER) in data


_LISTENER = r"""
import socket, struct, sys, time
group, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0")))
s.settimeout(0.2)
print("ready", flush=True)
got, end = [], time.monotonic() + secs
while time.monotonic() < end:
    try:
        got.append(s.recv(2048).decode(errors="replace"))
    except TimeoutError:
        pass
print("\n".join(got), flush=True)
"""

_SENDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""


def multicast_roundtrip(lab: Lab, sender: str, listeners: list[str], marker: str,
                        group: str = "239.255.77.1", port: int = 7777) -> dict[str, int]:
    """One datagram from ``sender`` to ``group``; how many copies each listener received."""
    procs = {}
    for name in listeners:
        ns, _ = lab.target(name)
        procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _LISTENER, group, str(port), "4"],
            stdout=subprocess.PIPE, text=True)
    for p in procs.values():
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    res = lab.exec(sender, [sys.executable, "-c", _SENDER, group, str(port), marker])
    assert res.ok, res.stderr
    counts = {}
    for name, p in procs.items():
        out, _ = p.communicate(timeout=15)
        counts[name] = out.split().count(marker)
    return counts


_PEER = r"""
import sys, time, json
from fabric.mesh.tcp import MeshNode
node = MeshNode(host=sys.argv[1], port=0, nickname="intruder", password=sys.argv[3].encode())
node.start()
node.connect([sys.argv[2]])
time.sleep(float(sys.argv[4]))
print(json.dumps(node.describe()["connections"]), flush=True)
node.stop()
"""


def wrong_password_peer(lab: Lab, ns_name: str, bind: str, target: str,
                        password: str, seconds: float = 4) -> str:
    """Run a mesh peer with another password in ``ns_name``, dialling ``target``."""
    ns, _ = lab.target(ns_name)
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _PEER, bind, target,
                          password, str(seconds)], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr
