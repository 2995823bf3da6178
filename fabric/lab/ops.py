"""Traffic checks between namespaces: ping, a TCP echo, iperf3.

Each check runs the real tool (or a few lines of Python) with `ip netns exec`;
helper servers are bounded in time and ended in ``finally``.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from ipaddress import IPv4Address

from fabric.lab.netns import LabError, ns_exec_argv, run
from fabric.lab.results import IperfResult, PingPair, TcpResult

__all__ = ["ping", "tcp_echo", "iperf3", "PingStream"]

_RTT = re.compile(r"time[=<]([\d.]+) ms")

_ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(1); s.settimeout(float(sys.argv[2]))
print(s.getsockname()[1], flush=True)
try:
    c, _ = s.accept(); c.settimeout(5); c.sendall(c.recv(256)); c.close()
except OSError as e:
    print("server:", e, flush=True)
"""

_ECHO_CLIENT = """
import json, socket, sys, time
t = time.monotonic()
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
    ms = (time.monotonic() - t) * 1000
    c.sendall(sys.argv[3].encode()); c.settimeout(5); got = c.recv(256).decode(); c.close()
    print(json.dumps({"ok": got == sys.argv[3], "ms": ms, "error": "" if got == sys.argv[3]
                      else "echo mismatch: %r" % got}))
except OSError as e:
    print(json.dumps({"ok": False, "ms": None, "error": str(e)}))
"""


def ping(src_ns: str, dst_ip: IPv4Address, *, src: str = "", dst: str = "",
         count: int = 1, wait: float = 2) -> PingPair:
    proc = run(["ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(wait), str(dst_ip)],
               ns=src_ns, check=False, timeout=count * wait + 10)
    ok = proc.returncode == 0
    m = _RTT.search(proc.stdout)
    if not m:
        avg = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
        rtt = float(avg.group(1)) if avg else None
    else:
        rtt = float(m.group(1))
    err = "" if ok else (proc.stderr.strip() or "no reply")[:200]
    return PingPair(src or src_ns, dst or str(dst_ip), dst_ip, ok, rtt if ok else None, err)


class PingStream:
    """A continuous ping (every ``interval`` s, bounded by ``limit`` s) from ``src_ns``:
    ``start()``, do something, ``stop()`` -> (sent, received)."""

    def __init__(self, src_ns: str, dst_ip: IPv4Address, interval: float = 0.2,
                 limit: float = 120) -> None:
        self.argv = ns_exec_argv(src_ns, ["ping", "-n", "-q", "-i", str(interval), "-W", "1",
                                          "-w", str(int(limit)), str(dst_ip)])
        self.proc: subprocess.Popen | None = None

    def start(self) -> PingStream:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        return self

    def stop(self) -> tuple[int, int]:
        if self.proc is None:
            raise LabError("ping stream was not started")
        self.proc.send_signal(2)  # SIGINT: ping prints its statistics
        out, _ = self.proc.communicate(timeout=10)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if not m:
            raise LabError(f"ping printed no statistics: {out[-300:]}")
        return int(m.group(1)), int(m.group(2))

    def close(self) -> None:
        """End the ping if still running (after a failure)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def tcp_echo(src_ns: str, dst_ns: str, dst_ip: IPv4Address, *, src: str = "", dst: str = "",
             timeout: float = 5) -> TcpResult:
    """Connect from ``src_ns`` to a one-shot echo server on ``dst_ip`` in ``dst_ns``."""
    server = subprocess.Popen(
        ns_exec_argv(dst_ns, ["python3", "-c", _ECHO_SERVER, str(dst_ip), str(timeout + 5)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = 0
    try:
        line = server.stdout.readline().strip() if server.stdout else ""
        if not line.isdigit():
            err = server.stderr.read() if server.stderr else ""
            raise LabError(f"echo server in {dst_ns} did not start: {line} {err}".strip())
        port = int(line)
        token = secrets.token_hex(8)
        out = run(["python3", "-c", _ECHO_CLIENT, str(dst_ip), str(port), token, str(timeout)],
                  ns=src_ns, check=False, timeout=timeout + 15)
        try:
            res = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            res = {"ok": False, "ms": None, "error": (out.stderr or out.stdout).strip()[:200]}
        return TcpResult(src or src_ns, dst or dst_ns, dst_ip, port, bool(res["ok"]),
                         res["ms"], res["error"])
    finally:
        server.kill()
        server.communicate()


def _pct(value: object) -> float | None:
    return round(float(value), 1) if isinstance(value, int | float) else None


def iperf3(src_ns: str, dst_ns: str, dst_ip: IPv4Address, *, src: str = "", dst: str = "",
           seconds: float = 2, streams: int = 1, port: int = 5201,
           cpus: tuple[int, int] | None = None, congestion: str = "") -> IperfResult:
    """TCP throughput from ``src_ns`` to an iperf3 server on ``dst_ip`` (Gbit/s received).

    ``cpus`` = (client core, server core) pins both ends (iperf3 -A) for steadier numbers;
    ``congestion`` (e.g. "cubic") is the client socket's congestion control (iperf3 -C)."""
    secs = max(1, round(seconds))  # iperf3 -t takes whole seconds
    limit = secs + 30
    pin = ["-A", f"{cpus[1]}"] if cpus else []
    server = subprocess.Popen(
        ns_exec_argv(dst_ns, ["timeout", str(limit), "iperf3", "-s", "-B", str(dst_ip),
                              "-p", str(port), *pin]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        data = None
        for _ in range(50):  # wait for the server to listen
            out = run(["iperf3", "-c", str(dst_ip), "-p", str(port), "-t", str(secs),
                       "-P", str(streams), "-J", *(["-A", str(cpus[0])] if cpus else []),
                       *(["-C", congestion] if congestion else [])],
                      ns=src_ns, check=False, timeout=secs + 30)
            try:
                data = json.loads(out.stdout)
            except ValueError:
                data = {"error": out.stderr.strip() or "no JSON from iperf3"}
            err = str(data.get("error", ""))
            if "refused" in err and server.poll() is None:
                time.sleep(0.1)
                continue
            break
        if not data or data.get("error"):
            why = (data or {}).get("error", "no result")
            raise LabError(f"iperf3 {src or src_ns} -> {dst_ip} failed: {why}")
        end = data["end"]
        bps = float(end["sum_received"]["bits_per_second"])
        retr = int(end.get("sum_sent", {}).get("retransmits", 0) or 0)
        took = float(end["sum_received"].get("seconds", secs))
        cpu = end.get("cpu_utilization_percent") or {}
        return IperfResult(src or src_ns, dst or dst_ns, dst_ip, round(bps / 1e9, 3), retr,
                           took, streams, _pct(cpu.get("host_total")),
                           _pct(cpu.get("remote_total")))
    finally:
        server.terminate()  # `timeout` passes SIGTERM on to iperf3
        try:
            server.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
