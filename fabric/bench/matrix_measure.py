"""The per-round measurements of ``fabric bench matrix`` between two namespaces: iperf3 TCP
(1 and N streams) with the machine's CPU time during the run, sockperf TCP ping-pong
(round trips per second, p50/p99 RTT) and ping RTT.

CPU cost is whole-machine busy time from /proc/stat over the run (both emulated hosts share
this kernel, so that is both hosts together, plus whatever else runs: the docs say so).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from ipaddress import IPv4Address
from typing import Any

from fabric.lab import ops
from fabric.lab.netns import LabError

__all__ = ["Path2", "throughput", "sockperf", "ping_rtt", "cpu_busy_seconds", "SOCKPERF_PORT"]

SOCKPERF_PORT = 11111
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PCT = re.compile(r"percentile (\d+\.\d+) =\s+([\d.]+)")
_VALID = re.compile(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=\d+; "
                    r"ReceivedMessages=(\d+)")
_PING = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+/([\d.]+) ms")


class Path2:
    """A measured path: client namespace -> server namespace and address."""

    def __init__(self, src_ns: str, dst_ns: str, dst_ip: IPv4Address, label: str) -> None:
        self.src_ns, self.dst_ns, self.dst_ip, self.label = src_ns, dst_ns, dst_ip, label


def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLK_TCK


def throughput(path: Path2, seconds: float, streams: int) -> dict[str, Any]:
    """iperf3 Gbit/s and CPU seconds per GB moved (whole machine during the run)."""
    c0, t0 = cpu_busy_seconds(), time.monotonic()
    res = ops.iperf3(path.src_ns, path.dst_ns, path.dst_ip, src=path.label, dst=path.label,
                     seconds=seconds, streams=streams)
    cpu, wall = cpu_busy_seconds() - c0, time.monotonic() - t0
    gb = res.gbps * res.seconds / 8  # GB moved (decimal) in the measured interval
    # the iperf3 run also spends set-up time outside its interval: count busy time only
    # for the interval, pro rata
    per_gb = cpu * min(1.0, res.seconds / wall) / gb if gb > 0 else None
    return {"gbps": res.gbps, "retransmits": res.retransmits, "cpu_s_per_gb": per_gb}


def sockperf(path: Path2, seconds: float) -> dict[str, Any]:
    """TCP ping-pong: round trips per second and p50/p99 RTT in microseconds."""
    exe = shutil.which("sockperf")
    if exe is None:
        raise LabError("sockperf is not installed", fix="apt-get install sockperf")
    ip = str(path.dst_ip)
    # the server ends by itself (timeout) even if this process dies
    server = subprocess.Popen(
        ["ip", "netns", "exec", path.dst_ns, "timeout", str(int(seconds) + 20), exe, "sr",
         "--tcp", "-i", ip, "-p", str(SOCKPERF_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = ""
        for _ in range(20):  # until the server listens
            time.sleep(0.15)
            proc = subprocess.run(
                ["ip", "netns", "exec", path.src_ns, exe, "pp", "--tcp", "-i", ip, "-p",
                 str(SOCKPERF_PORT), "-t", str(max(1, int(seconds))), "--full-rtt"],
                capture_output=True, text=True, timeout=seconds + 30, check=False)
            out = proc.stdout + proc.stderr
            if proc.returncode == 0 and "Valid Duration" in out:
                break
        valid = _VALID.search(out)
        if not valid:
            raise LabError(f"sockperf {path.label}: no result: {out.strip()[-300:]}")
        pct = {float(q): float(v) for q, v in _PCT.findall(out)}
        run_s, received = float(valid.group(1)), int(valid.group(2))
        return {"rr_per_s": round(received / run_s) if run_s else None,
                "rtt_p50_us": pct.get(50.0), "rtt_p99_us": pct.get(99.0)}
    finally:
        if server.poll() is None:
            server.terminate()  # `ip netns exec` execs timeout, which passes it to sockperf
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def ping_rtt(path: Path2, count: int) -> dict[str, Any]:
    """Average ping RTT in milliseconds over ``count`` pings 10 ms apart."""
    proc = subprocess.run(["ip", "netns", "exec", path.src_ns, "ping", "-n", "-q", "-c",
                           str(count), "-i", "0.01", "-W", "2", str(path.dst_ip)],
                          capture_output=True, text=True, timeout=count + 20, check=False)
    m = _PING.search(proc.stdout)
    if proc.returncode != 0 or not m:
        raise LabError(f"ping {path.label}: {(proc.stdout + proc.stderr).strip()[-200:]}")
    return {"ping_ms": float(m.group(1))}
