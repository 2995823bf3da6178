"""Real-traffic probes between network namespaces: does a TCP/UDP connection get through?

Used by the policy tests and the benchmark. A one-shot echo server listens on a
given port in the destination namespace; the client sends a token and expects it
back. Processes are started with an argv list (``ip netns exec NS python3 -c ...``)
and always ended by their own handle.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from typing import Literal

import attrs

__all__ = ["Probe", "ProbeResult", "probe", "probe_many"]

_SERVER = r"""
import socket, sys
ip, port, proto, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
if proto == "tcp":
    s.listen(8)
s.settimeout(wait)
print("ready", flush=True)
try:
    while True:
        if proto == "tcp":
            c, _ = s.accept()
            c.settimeout(wait)
            c.sendall(c.recv(64))
            c.close()
        else:
            data, addr = s.recvfrom(64)
            s.sendto(data, addr)
except OSError:
    pass
"""

_CLIENT = r"""
import socket, sys
ip, port, proto, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
timeout = float(sys.argv[5])
ok = False
try:
    if proto == "tcp":
        c = socket.create_connection((ip, port), timeout=timeout)
        c.sendall(token.encode())
        ok = c.recv(64) == token.encode()
    else:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(timeout / 3)
        for _ in range(3):
            c.sendto(token.encode(), (ip, port))
            try:
                if c.recvfrom(64)[0] == token.encode():
                    ok = True
                    break
            except socket.timeout:
                pass
except OSError:
    pass
print("ok" if ok else "fail")
"""


@attrs.frozen
class Probe:
    src_ns: str
    dst_ns: str
    dst_ip: IPv4Address
    port: int
    proto: Literal["tcp", "udp"] = "tcp"
    label: str = ""


@attrs.frozen
class ProbeResult:
    probe: Probe
    ok: bool
    detail: str = ""


def _argv(ns: str, script: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args]


def probe(p: Probe, timeout: float = 1.5) -> ProbeResult:
    server = subprocess.Popen(
        _argv(p.dst_ns, _SERVER, str(p.dst_ip), str(p.port), p.proto, str(timeout + 3)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().strip() if server.stdout else ""
        if line != "ready":
            err = server.stderr.read() if server.stderr else ""
            return ProbeResult(p, False, f"server did not start: {err.strip()[:200]}")
        token = secrets.token_hex(6)
        out = subprocess.run(_argv(p.src_ns, _CLIENT, str(p.dst_ip), str(p.port), p.proto,
                                   token, str(timeout)),
                             capture_output=True, text=True, timeout=timeout + 20)
        res = out.stdout.strip()
        return ProbeResult(p, res == "ok", res or out.stderr.strip()[:200])
    finally:
        server.kill()
        server.communicate()


def probe_many(probes: list[Probe], timeout: float = 1.5, workers: int = 8) -> list[ProbeResult]:
    """Run probes in parallel; probes to the same (namespace, port, protocol) run in turn."""
    groups: dict[tuple[str, int, str], list[int]] = {}
    for i, p in enumerate(probes):
        groups.setdefault((p.dst_ns, p.port, p.proto), []).append(i)
    results: list[ProbeResult | None] = [None] * len(probes)

    def run_group(idx: list[int]) -> None:
        for i in idx:
            results[i] = probe(probes[i], timeout)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run_group, groups.values()))
    return [r for r in results if r is not None]
