"""A real, private ``etcd`` server for tests (the lab starts its own: fabric.lab.underlay).

``EtcdServer`` runs the distribution's ``etcd`` binary (3.4) with its own data
directory, either on loopback in the current namespace (free ports are picked)
or inside a network namespace via ``ip netns exec``. It is stopped by pid only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from fabric.errors import ConfigError, StoreUnavailable

__all__ = ["EtcdServer", "etcd_binary", "free_port"]


def etcd_binary() -> str | None:
    """Path of the ``etcd`` executable, or None when it is not installed."""
    return shutil.which("etcd")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (in the current namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EtcdServer:
    """Start / stop one single-member etcd; ``with EtcdServer(dir) as etcd: etcd.url``."""

    def __init__(
        self,
        data_dir: str | Path,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        netns: str | None = None,
        *,
        peer_port: int | None = None,
        log_path: str | Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.netns = netns
        # inside a fresh namespace the well-known ports are free; here they may not be
        self.client_port = client_port or (2379 if netns else free_port(host))
        self.peer_port = peer_port or (2380 if netns else free_port(host))
        self.log_path = Path(log_path) if log_path else self.data_dir.with_suffix(".log")
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _command(self) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise ConfigError(
                "the etcd binary is not installed",
                fix="install Debian's etcd-server package (apt-get install etcd-server)",
            )
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            binary,
            "--name", "default",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
        ]  # fmt: skip
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]  # execs etcd: same pid
        return cmd

    def start(self) -> EtcdServer:
        """Start etcd (again, with the same data and ports) and wait until it is healthy."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        cmd = self._command()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise StoreUnavailable(
                    f"etcd exited at start-up; see {self.log_path}",
                    fix="check that the ports and data directory are free",
                )
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise StoreUnavailable(
            f"etcd did not become healthy within {self.start_timeout}s; see {self.log_path}"
        )

    def healthy(self) -> bool:
        """True if etcd answers its /health endpoint with a leader."""
        if self.netns:  # the URL is only reachable from inside the namespace
            probe = (
                "import sys, urllib.request as u\n"
                "try: print(u.urlopen(sys.argv[1], timeout=1).read().decode())\n"
                "except OSError: pass"
            )
            cmd = ["ip", "netns", "exec", self.netns, sys.executable, "-c", probe]
            try:
                out = subprocess.run(
                    [*cmd, self.url + "/health"], capture_output=True, text=True, timeout=5
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                return False
        else:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    out = resp.read().decode()
            except OSError:
                return False
        try:
            return json.loads(out).get("health") == "true"
        except ValueError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate etcd by pid (SIGTERM, then SIGKILL); data stays for a restart."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL etcd by pid (a crash, for tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
