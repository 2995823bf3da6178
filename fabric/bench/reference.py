"""Reference data paths measured in the same lab run as a backend.

``UdpTunReference``: flannel udp's per-packet design as a small C program
(``cref/udp_tun_loop.c``: one TUN read + one ``sendto`` per packet, one ``recv`` + one TUN
write per datagram, TUN MTU 1472), compiled by the bench with the system's C compiler and
run between two lab hosts. iperf3 then goes host h1 -> h2's TUN address through it: the
user-space backends' ratio to this row is the framework's gain (or cost) over the peer's
own design, independent of how fast the machine is.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError

__all__ = ["UdpTunReference", "compile_reference"]

REF_NET = "10.255.255."  # inside the lab's host namespaces only
REF_PORT = 8299
REF_MTU = 1472  # flannel udp's TUN MTU on a 1500 underlay
REF_DEV = "nfref0"


def compile_reference(out_dir: Path) -> Path:
    """Build ``udp_tun_loop`` into ``out_dir`` (ConfigError naming what is missing)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ConfigError("no C compiler (cc) for the per-packet reference",
                          fix="apt-get install gcc, or run without --reference")
    src = resources.files("fabric.bench").joinpath("cref/udp_tun_loop.c")
    out = out_dir / "udp_tun_loop"
    with resources.as_file(src) as path:
        res = subprocess.run([cc, "-O2", "-o", str(out), str(path)], capture_output=True,
                             text=True, timeout=120)
    if res.returncode != 0:
        raise ConfigError(f"compiling the reference failed: {res.stderr.strip()[-400:]}")
    return out


class UdpTunReference:
    """The C loop on two lab hosts; ``dst_ip`` is h2's end of the reference tunnel."""

    def __init__(self, lab: Any, a: str = "h1", b: str = "h2") -> None:
        self.lab, self.a, self.b = lab, a, b
        self.procs: list[subprocess.Popen] = []
        self.src_ip = IPv4Address(REF_NET + "1")
        self.dst_ip = IPv4Address(REF_NET + "2")
        self._tmp = tempfile.TemporaryDirectory(prefix="nfref-")

    def __enter__(self) -> UdpTunReference:
        binary = compile_reference(Path(self._tmp.name))
        ends = ((self.a, self.src_ip, self.dst_ip, self.b), (self.b, self.dst_ip, self.src_ip,
                                                             self.a))
        try:
            for host, mine, theirs, other in ends:
                ns, under = self.lab.target(host)
                _, peer_under = self.lab.target(other)
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns, str(binary), REF_DEV, str(under),
                     str(REF_PORT), str(peer_under), str(REF_MTU)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.procs.append(proc)
                if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                    raise ConfigError(f"the reference loop did not start on {host}: "
                                      f"{proc.stderr.read() if proc.stderr else ''}")
                for cmd in (["ip", "link", "set", REF_DEV, "up", "mtu", str(REF_MTU)],
                            ["ip", "addr", "add", f"{mine}/32", "dev", REF_DEV],
                            ["ip", "route", "add", f"{theirs}/32", "dev", REF_DEV, "src",
                             str(mine)]):
                    subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True,
                                   capture_output=True, timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.procs:  # our own children, by handle: the TUN devices go with them
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.procs = []
        self._tmp.cleanup()

    def iperf(self, **kw: Any) -> Any:
        from fabric.lab import ops

        src_ns, _ = self.lab.target(self.a)
        dst_ns, _ = self.lab.target(self.b)
        return ops.iperf3(src_ns, dst_ns, self.dst_ip, src=self.a, dst=f"{self.b}:{REF_DEV}",
                          **kw)
