"""exabgp as a supervised child process, with the agent as its API process.

:func:`render_config` writes exabgp's configuration (one ``neighbor`` block per
BGP peer, all sharing one ``process`` whose ``run`` line is :mod:`.relay`).
:class:`Speaker` listens on a unix socket, starts exabgp, reads the JSON lines
the relay forwards and hands each validated message to a callback; commands
(``announce route ...``) go the other way. When exabgp or the relay dies the
speaker restarts it with exponential backoff and tells the owner, who keeps
routes for a graceful-restart hold instead of dropping traffic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

import attrs

from fabric.errors import BackendError, ConfigError
from fabric.fsutil import atomic_write
from fabric.procutil import pid_running, stop_pid, stop_process
from fabric_calico_bgp.messages import Message, MessageError, parse_message

__all__ = ["BgpNeighbor", "render_config", "exabgp_env", "exabgp_command", "Speaker"]

RELAY = Path(__file__).with_name("relay.py")


@attrs.frozen
class BgpNeighbor:
    address: IPv4Address
    peer_as: int
    description: str = ""
    rr_client: bool = False  # we reflect routes to it (we are its route reflector)
    kind: str = "global"  # global | node-mesh | route-reflector | rr-client


def render_config(
    *,
    router_id: IPv4Address,
    local_as: int,
    neighbors: Sequence[BgpNeighbor],
    api_socket: Path,
    hold_time: int = 30,
    graceful_restart: int = 120,
    python: str = sys.executable,
) -> str:
    """exabgp configuration text; every neighbor feeds the one API process ``fabric``."""
    if not 1 <= local_as <= 4294967295:
        raise ConfigError(f"AS number {local_as} is out of range", fix="use 1-4294967295")
    if hold_time != 0 and not 3 <= hold_time <= 65535:
        raise ConfigError(f"BGP hold time {hold_time} is invalid", fix="use 0 or 3-65535")
    lines = [
        "process fabric {",
        f"    run {python} {RELAY} {api_socket};",
        "    encoder json;",
        "}",
    ]
    for nb in sorted(neighbors, key=lambda n: n.address):
        if nb.address == router_id:
            continue
        desc = "".join(c for c in nb.description if c.isalnum() or c in "-_.")[:60]
        lines += [
            f"neighbor {nb.address} {{",
            *([f'    description "{desc}";'] if desc else []),
            f"    router-id {router_id};",
            f"    local-address {router_id};",
            f"    local-as {local_as};",
            f"    peer-as {nb.peer_as};",
            f"    hold-time {hold_time};",
            # End-of-RIB only once the agent has re-announced everything (graceful restart:
            # an early EOR would make the peer sweep routes we are about to send)
            "    manual-eor true;",
            "    family { ipv4 unicast; }",
            "    capability {",
            f"        graceful-restart {graceful_restart};" if graceful_restart else "",
            "        route-refresh;",
            "    }",
            "    api {",
            "        processes [ fabric ];",
            "        receive { parsed; update; }",
            "        neighbor-changes;",
            "    }",
            "}",
        ]
    return "\n".join(line for line in lines if line) + "\n"


REACTOR_SPEED = 10.0  # exabgp.reactor.speed: poll at most every 100 ms when idle
RELOAD_CONFIRM = 1.0  # s to wait for exabgp to log a reload before signalling again
RELOAD_DONE = "performing reload of exabgp"  # exabgp logs this (INFO) as it reloads
RELOAD_FAILED = "could not load/reload configuration"


def exabgp_env(bind: IPv4Address, port: int = 179) -> dict[str, str]:
    """Environment for exabgp: stay root, no CLI pipes, listen on the node address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("exabgp")}
    env.update(
        {
            "exabgp.daemon.drop": "false",
            "exabgp.daemon.user": "root",
            "exabgp.daemon.daemonize": "false",
            "exabgp.api.cli": "false",
            "exabgp.api.ack": "false",
            "exabgp.api.respawn": "false",
            "exabgp.api.terminate": "true",
            "exabgp.log.destination": "stdout",
            "exabgp.log.level": "INFO",
            "exabgp.log.short": "false",
            "exabgp.log.statistics": "false",  # a line per keepalive otherwise
            "exabgp.tcp.bind": str(bind),
            "exabgp.tcp.port": str(port),
            "exabgp.bgp.passive": "false",
            # exabgp's reactor polls every speed/100 s: 10 ms by default, 100 wake-ups a
            # second, which cost the lab's hosts ~20 % of their TCP throughput on a 2-vCPU VM
            # (docs/benchmarks.md). Sockets and the API pipe still wake it at once; timers
            # and accept() are served within 100 ms.
            "exabgp.reactor.speed": str(REACTOR_SPEED),
        }
    )
    return env


def exabgp_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "exabgp", "server", str(config)]


class Speaker:
    """One exabgp process and its API connection, restarted with backoff when it dies.

    ``on_message`` gets every validated message; ``on_session_lost`` is called
    when the API connection ends (exabgp gone: every BGP session with it);
    ``on_connected`` when a new API connection is up (re-send announcements).
    Callbacks run on the speaker's reader thread.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        bind: IPv4Address,
        port: int = 179,
        on_message: Callable[[Message], None],
        on_connected: Callable[[], None] = lambda: None,
        on_session_lost: Callable[[], None] = lambda: None,
        log: logging.Logger | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.run_dir = run_dir
        self.config_path = run_dir / "exabgp.conf"
        self.socket_path = run_dir / "api.sock"
        self.log_path = run_dir / "exabgp.log"
        self.bind, self.port = bind, port
        self.on_message, self.on_connected = on_message, on_connected
        self.on_session_lost = on_session_lost
        self.log = log or logging.getLogger("fabric.calico-bgp")
        self.backoff = backoff
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.malformed = 0
        self.last_error = ""
        self.connected = threading.Event()
        self._conn: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._reload_pending = False
        self._reload_sent_at: float | None = None  # SIGUSR1 sent, reload not yet logged
        self._reload_log_offset = 0
        self.reload_retries = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control --
    def start(self, config_text: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_config(config_text)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        self._listener.listen(2)
        self._listener.settimeout(0.5)
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name="exabgp", daemon=True)
        self._thread.start()

    def write_config(self, text: str) -> None:
        atomic_write(self.config_path, text, durable=False)  # rewritten at every start

    def reload(self, config_text: str) -> None:
        """New neighbor set: rewrite the config and ask exabgp to reload it (SIGUSR1).

        exabgp 4.2-5.0 drops a SIGUSR1 that arrives while updates wait in its
        adj-rib-out (it re-arms the signal, then skips the reload), so a reload
        counts only once exabgp logs that it performed it; until then it is
        signalled again every RELOAD_CONFIRM seconds (see :meth:`_confirm_reload`).
        """
        self.write_config(config_text)
        # Before exabgp is up its SIGUSR1 handler may not be installed yet (the signal
        # would kill it): signal only a connected exabgp, else once it connects.
        with self._send_lock:
            proc = self.proc
            if self._conn is not None and proc is not None and proc.poll() is None:
                self._signal_reload(proc)
            else:
                self._reload_pending = True

    def _signal_reload(self, proc: subprocess.Popen) -> None:
        """SIGUSR1 exabgp and remember where its log stood (called with _send_lock held)."""
        try:
            self._reload_log_offset = self.log_path.stat().st_size
        except OSError:
            self._reload_log_offset = 0
        self._reload_pending = False
        self._reload_sent_at = time.monotonic()
        proc.send_signal(signal.SIGUSR1)

    def _confirm_reload(self) -> None:
        """Signal again if exabgp has not performed the last reload asked of it."""
        with self._send_lock:
            sent, proc = self._reload_sent_at, self.proc
            if sent is None or proc is None or proc.poll() is not None \
                    or time.monotonic() - sent < RELOAD_CONFIRM:
                return
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(self._reload_log_offset)
                    logged = f.read(1024 * 1024).decode(errors="replace")
            except OSError:
                logged = ""
            if RELOAD_DONE in logged:
                self._reload_sent_at = None
                if RELOAD_FAILED in logged:
                    self.last_error = f"exabgp rejected its new configuration; see {self.log_path}"
                    self.log.error("%s", self.last_error)
                return
            self.reload_retries += 1
            self.log.info("exabgp has not reloaded within %.0fs of SIGUSR1 (it drops the "
                          "signal while updates are pending): signalling again", RELOAD_CONFIRM)
            self._signal_reload(proc)

    def send(self, command: str) -> bool:
        """Send one API command (e.g. ``announce route ...``); False if exabgp is not connected."""
        conn = self._conn
        if conn is None:
            return False
        try:
            with self._send_lock:
                conn.sendall(command.encode() + b"\n")
            return True
        except OSError as exc:
            self.last_error = f"sending to exabgp: {exc}"
            return False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        self._stop.set()
        self._kill()
        if self._thread is not None:
            self._thread.join(10)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # -- internals --
    def _kill(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        if self.proc is not None:
            stop_process(self.proc, timeout=5)

    def _end_stale(self) -> None:
        """A previous agent killed with -9 may have left its exabgp: end it, by its pid file."""
        pidfile = self.run_dir / "exabgp.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.config_path).encode() in cmdline:
            self.log.warning("ending exabgp pid %d left by a previous agent", pid)
            stop_pid(pid, lambda: pid_running(pid), timeout=5)

    def _spawn(self) -> None:
        self._end_stale()
        with contextlib.suppress(OSError):  # keep one old log, bounded
            if self.log_path.stat().st_size > 5 * 1024 * 1024:
                os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                exabgp_command(self.config_path), stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=exabgp_env(self.bind, self.port),
                cwd=str(self.run_dir), start_new_session=True,
            )
        except OSError as exc:
            raise BackendError(f"cannot start exabgp: {exc}",
                               fix="install exabgp (pip install exabgp)") from exc
        finally:
            logf.close()
        (self.run_dir / "exabgp.pid").write_text(f"{self.proc.pid}\n")

    def _accept(self) -> socket.socket | None:
        deadline = time.monotonic() + 30
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return None
            try:
                conn, _ = self._listener.accept()  # type: ignore[union-attr]
                return conn
            except TimeoutError:
                continue
            except OSError:
                return None
        return None

    def _supervise(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._spawn()
            except BackendError as exc:
                self.last_error = str(exc)
                self.log.error("%s", exc)
            else:
                conn = self._accept()
                if conn is not None:
                    self._serve(conn)
            if self._stop.is_set():
                break
            code = self.proc.poll() if self.proc is not None else None
            self._kill()
            self.last_error = f"exabgp ended (exit {code}); see {self.log_path}"
            self.log.warning("%s; restarting in %.1fs", self.last_error, delay)
            self.restarts += 1
            self.on_session_lost()
            if time.monotonic() - started > 60:
                delay = self.backoff[0]  # it ran for a while: start the backoff again
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.backoff[1])

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(RELOAD_CONFIRM / 2)  # wake up to confirm reloads
        with self._send_lock:
            self._conn = conn
            self._reload_sent_at = None  # a new exabgp read the current config at start
            if self._reload_pending and self.proc is not None:
                self._signal_reload(self.proc)  # the config changed while it started
        self.connected.set()
        try:
            self.on_connected()
        except Exception:  # the owner's bug must not stop the speaker
            self.log.exception("on_connected failed")
        buf = b""
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    self._confirm_reload()
                    continue
                except OSError:
                    break
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._dispatch(line)
                self._confirm_reload()  # also when messages never let recv() time out
                if len(buf) > 4 * 1024 * 1024:
                    self.malformed += 1
                    self.log.error("dropping an over-long line from exabgp")
                    buf = b""
        finally:
            self.connected.clear()
            self._conn = None

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = parse_message(line)
        except MessageError as exc:
            self.malformed += 1
            self.last_error = f"malformed message: {exc}"
            self.log.warning("ignoring a malformed message from exabgp: %s", exc)
            return
        try:
            self.on_message(msg)
        except Exception:
            self.log.exception("handling %r failed", msg)
