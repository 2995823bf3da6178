"""Traffic checks of a running lab (a mixin of :class:`fabric.lab.Lab`): exec, ping,
TCP echo, iperf3 between hosts and pods named as in the lab ("h1", "h1p1", "sw", "rt")."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address

from fabric.lab import ops
from fabric.lab.netns import LabError, run
from fabric.lab.results import ExecResult, IperfResult, PingPair, PingResult, TcpResult

__all__ = ["TrafficMixin"]


class TrafficMixin:
    """Needs ``target(name) -> (namespace, address)`` and ``pods`` from the lab."""

    pods: dict

    def target(self, name: str) -> tuple[str, IPv4Address]:
        raise NotImplementedError

    def exec(self, target: str, argv: Sequence[str], *, timeout: float = 60) -> ExecResult:
        ns, _ = self.target(target)
        proc = run(list(argv), ns=ns, check=False, timeout=timeout)
        return ExecResult(target, tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def ping(self, src: str, dst: str, count: int = 1) -> PingPair:
        ns, _ = self.target(src)
        _, ip = self.target(dst)
        return ops.ping(ns, ip, src=src, dst=dst, count=count)

    def ping_all(self, pods: Iterable[str] | None = None, count: int = 1) -> PingResult:
        """Every pod pings every other pod (count packets each), in parallel."""
        names = list(pods) if pods is not None else sorted(self.pods)
        pairs = [(a, b) for a in names for b in names if a != b]
        with ThreadPoolExecutor(max_workers=8) as pool:
            res = list(pool.map(lambda p: self.ping(p[0], p[1], count), pairs))
        return PingResult(tuple(res))

    def converge(self, timeout: float = 20, pods: Iterable[str] | None = None) -> PingResult:
        """ping_all until every pair answers or ``timeout``; returns the last result."""
        end = time.monotonic() + timeout
        while True:
            res = self.ping_all(pods)
            if res.ok or time.monotonic() > end:
                return res
            time.sleep(0.3)

    def ping_stream(self, src: str, dst: str, interval: float = 0.2) -> ops.PingStream:
        """A started continuous ping ``src`` -> ``dst``; ``.stop()`` gives (sent, received)."""
        ns, _ = self.target(src)
        _, ip = self.target(dst)
        return ops.PingStream(ns, ip, interval).start()

    def tcp_check(self, src: str, dst: str, timeout: float = 5) -> TcpResult:
        src_ns, _ = self.target(src)
        dst_ns, ip = self.target(dst)
        return ops.tcp_echo(src_ns, dst_ns, ip, src=src, dst=dst, timeout=timeout)

    def iperf(self, src: str, dst: str, seconds: float = 2, streams: int = 1,
              cpus: tuple[int, int] | None = None, congestion: str = "") -> IperfResult:
        """iperf3 TCP ``src`` -> ``dst`` (hosts or pods); ``cpus`` pins client and server,
        ``congestion`` sets the client's TCP congestion control (default: the host's)."""
        src_ns, _ = self.target(src)
        dst_ns, ip = self.target(dst)
        return ops.iperf3(src_ns, dst_ns, ip, src=src, dst=dst, seconds=seconds,
                          streams=streams, cpus=cpus, congestion=congestion)

    def wait(self, check: Callable[[], bool], timeout: float, interval: float = 0.3) -> float:
        """Seconds until ``check()`` is true; LabError after ``timeout``."""
        t0 = time.monotonic()
        while True:
            if check():
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise LabError(f"condition not met within {timeout}s")
            time.sleep(interval)
