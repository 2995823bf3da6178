"""The dataplane engine: a TUN/TAP device, a UDP port, one forwarding thread per direction.

Two threads (device -> UDP and UDP -> device) proved best on 2 cores: each
blocks in its own system calls, which release the GIL, and batching (super-
packets in, GSO/GRO out) keeps Python work per byte low. The control plane
changes the :class:`PeerTable` / :class:`MacTable` / :class:`WeaveRoutes` at any time.
The routed format adds a third, mostly sleeping thread: heartbeats and MAC expiry.

Counters are plain ints written by one thread each and read by :meth:`status`.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import attrs

from fabric.dataplane.crypto import CIPHERS, TAG_LEN, KeyPair
from fabric.dataplane.heartbeat import PathHealth
from fabric.dataplane.l2 import HEADER_LEN, ROUTED_HEADER_LEN
from fabric.dataplane.peers import MacTable, PeerTable
from fabric.dataplane.routing import WeaveRoutes, name_text
from fabric.dataplane.tun import TunDevice, open_tun
from fabric.dataplane.udp import UdpPort, open_udp
from fabric.errors import ConfigError

__all__ = ["Engine", "EngineConfig", "L3_OVERHEAD", "L2_OVERHEAD", "ROUTED_OVERHEAD",
           "SEAL_OVERHEAD"]

L3_OVERHEAD = 28  # outer IPv4 + UDP: flannel udp's MTU rule
L2_OVERHEAD = 28 + HEADER_LEN + 14  # + our header + inner Ethernet (+16 tag once per message)
# routed (weave sleeve): outer IPv4 + UDP, the 33-byte routed header, the inner Ethernet
# header; sealed adds the AEAD tag so a full-size frame still fits one datagram
ROUTED_OVERHEAD = 28 + ROUTED_HEADER_LEN + 14
SEAL_OVERHEAD = TAG_LEN


@attrs.frozen
class EngineConfig:
    mode: Literal["tun", "tap"]
    device: str
    listen_ip: str
    port: int = 8285
    underlay_mtu: int = 1500
    offload: bool = True  # False: per-packet fallback, for comparison and tests
    encrypt: bool = False  # tap only
    cipher: str = "aesgcm"
    psk: bytes = b""
    persist: bool = False  # keep the device when the engine stops (agent restarts)
    strict_source: bool = True  # drop datagrams from addresses that are not peers
    full_checksum: bool = True  # tun: complete inner checksums (flannel-compatible wire)
    icmp_source: str = ""  # tun: source of ICMP net-unreachable ("" = none sent)
    routed: bool = False  # tap: weave-routed format (origin/dst/ttl header, WeaveRoutes table)
    hop_limit: int = 16  # routed: TTL of a message; each relay takes one
    heartbeat_interval: float = 1.0  # routed: seconds between heartbeats to each neighbour
    heartbeat_misses: int = 3  # routed: missed intervals before a path is unreachable

    def __attrs_post_init__(self) -> None:
        if self.mode not in ("tun", "tap"):
            raise ConfigError(f"dataplane mode must be 'tun' or 'tap', got {self.mode!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"dataplane port {self.port} is out of range 1-65535")
        if self.encrypt and self.mode != "tap":
            raise ConfigError("encryption is available on the L2 (tap) path only",
                              fix="use mode tap, or drop encrypt")
        if self.cipher not in CIPHERS:
            raise ConfigError(f"unknown cipher {self.cipher!r}", fix=f"one of {sorted(CIPHERS)}")
        if not 576 <= self.underlay_mtu <= 65535:
            raise ConfigError(f"underlay MTU {self.underlay_mtu} is out of range 576-65535")
        if self.routed and self.mode != "tap":
            raise ConfigError("the routed format is L2: it needs mode tap", fix="use mode tap")
        if not 2 <= self.hop_limit <= 255:
            raise ConfigError(f"hop_limit {self.hop_limit} is out of range 2-255",
                              fix="the default 16 covers any mesh diameter weave meets")
        if not 0.01 <= self.heartbeat_interval <= 60 or not 1 <= self.heartbeat_misses <= 100:
            raise ConfigError("heartbeat_interval must be 0.01-60 s and heartbeat_misses 1-100",
                              fix="the defaults are 1 s and 3")

    @property
    def overhead(self) -> int:
        """Bytes between the underlay MTU and the device (pod) MTU for this wire format."""
        if self.mode == "tun":
            return L3_OVERHEAD
        if self.routed:
            return ROUTED_OVERHEAD + (SEAL_OVERHEAD if self.encrypt else 0)
        return L2_OVERHEAD

    @property
    def mtu(self) -> int:
        """MTU of the device: a full-size frame fits one datagram on the underlay."""
        return self.underlay_mtu - self.overhead

    @property
    def max_frame(self) -> int:
        """Largest L2 frame that is not a GSO super-frame: device MTU + Ethernet header."""
        return self.mtu + 14

    @property
    def datagram(self) -> int:
        """Largest UDP payload on the underlay."""
        return self.underlay_mtu - L3_OVERHEAD


class Engine:
    """Forwards between the device and the UDP port until :meth:`stop`."""

    def __init__(self, config: EngineConfig,
                 table: PeerTable | MacTable | WeaveRoutes | None = None,
                 key: KeyPair | None = None,
                 on_peer_health: Callable[[bytes, str, str], None] | None = None) -> None:
        self.config = config
        if table is None:
            if config.routed:
                raise ConfigError("the routed format needs a WeaveRoutes table (local name)",
                                  fix="pass WeaveRoutes(local_peer_name)")
            table = PeerTable() if config.mode == "tun" else MacTable()
        if config.routed != isinstance(table, WeaveRoutes):
            raise ConfigError("WeaveRoutes goes with routed=True, and only with it",
                              fix="set EngineConfig(routed=True) with a WeaveRoutes table")
        self.table = table
        if config.encrypt and key is None:
            raise ConfigError("encrypt needs this engine's key pair")
        self.key = key
        # routed: per-neighbour path health from heartbeats (the timer thread sends them)
        self.health = PathHealth(config.heartbeat_interval, config.heartbeat_misses,
                                 on_peer_health) if config.routed else None
        self.device: TunDevice | None = None
        self.port: UdpPort | None = None
        self.tx: dict[str, int] = {"packets": 0, "bytes": 0, "datagrams": 0, "reads": 0}
        self.rx: dict[str, int] = {"packets": 0, "bytes": 0, "datagrams": 0, "writes": 0,
                                   "batches": 0}
        self.tx_drops: dict[str, int] = {}
        self.rx_drops: dict[str, int] = {}
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stop_r, self._stop_w = -1, -1
        self._stopping = threading.Event()
        self.started = 0.0

    # -- lifecycle --
    def open(self) -> None:
        """Create the device and the UDP port (no forwarding yet)."""
        cfg = self.config
        self.device = open_tun(cfg.device, tap=cfg.mode == "tap", offload=cfg.offload,
                               persist=cfg.persist)
        try:
            self.port = open_udp(cfg.listen_ip, cfg.port, offload=cfg.offload)
        except Exception:
            self.device.close()
            raise
        self._stop_r, self._stop_w = os.pipe()

    def start(self, directions: tuple[str, ...] = ("tx", "rx")) -> None:
        """Open (if needed) and start one forwarding thread per direction.

        A caller may fork between :meth:`open` and :meth:`start` to run each
        direction in its own process (``python -m fabric.dataplane --split``).
        """
        cfg = self.config
        if self.device is None:
            self.open()
        self._stopping.clear()
        loops: tuple = ()
        if cfg.mode == "tun":
            from fabric.dataplane.fwd_l3 import rx_loop, tx_loop
        elif cfg.routed:
            from fabric.dataplane.fwd_routed import rx_loop, timer_loop, tx_loop

            loops = (("timer", timer_loop),)
        else:
            from fabric.dataplane.fwd_l2 import rx_loop, tx_loop
        for name, fn in (("tx", tx_loop), ("rx", rx_loop), *loops):
            if name not in directions and not (name == "timer" and "rx" in directions):
                continue
            t = threading.Thread(target=self._guard, args=(fn,), daemon=True,
                                 name=f"{cfg.device}-{name}")
            self._threads.append(t)
        self.started = time.monotonic()
        for t in self._threads:
            t.start()

    def _guard(self, fn) -> None:
        prof_dir = os.environ.get("NFDP_PROFILE")  # debugging aid: cProfile each loop
        prof = None
        if prof_dir:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        try:
            fn(self)
        except Exception as exc:  # a bug must be visible in status, not kill silently
            if not self._stopping.is_set():
                self.errors.append(f"{threading.current_thread().name}: {exc!r}")
                raise
        finally:
            if prof is not None:
                prof.disable()
                prof.dump_stats(f"{prof_dir}/{threading.current_thread().name}.{os.getpid()}.prof")

    def stop(self) -> None:
        self._stopping.set()
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join(timeout=3)
        self._threads = []
        if self.device is not None:
            self.device.close()
        if self.port is not None:
            self.port.sock.close()
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def healthy(self) -> bool:
        """Both forwarding threads alive (a deleted device ends the reader with an error)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    # -- helpers for the loops --
    def wait_readable(self, fd: int) -> bool:
        """Block until ``fd`` is readable; False when the engine is stopping."""
        if self._stopping.is_set():
            return False
        r, _w, _x = select.select([fd, self._stop_r], [], [], 1.0)
        return not self._stopping.is_set()

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the engine is stopping."""
        return not self._stopping.wait(seconds)

    def peer_health(self) -> dict[bytes, dict]:
        """Routed: {neighbour name: {"state", "last_heard", "rtt_ms"}} from heartbeats."""
        if self.health is None:
            return {}
        self.health.set_peers(self.table.neighbours)  # a new neighbour shows at once: pending
        return self.health.health()

    # -- status --
    def status(self) -> dict[str, Any]:
        dev, port = self.device, self.port
        offload = dev.offload.as_dict() if dev else {}
        if port:
            offload.update(port.as_dict())
        reasons = [r for r in (offload.get("reason"), port.reason if port else "") if r]
        return {
            "mode": self.config.mode,
            "device": self.config.device,
            "port": self.config.port,
            "mtu": self.config.mtu,
            "encrypt": self.config.encrypt,
            "cipher": self.config.cipher if self.config.encrypt else "",
            "fast_path": bool(dev and dev.offload.vnet_hdr and dev.offload.tso),
            "offload": offload,
            "fallback_reason": "; ".join(reasons),
            "running": self.running,
            "peers": len(self.table),
            "tx": dict(self.tx),
            "rx": dict(self.rx),
            "drops": {"tx": dict(self.tx_drops), "rx": dict(self.rx_drops)},
            "errors": list(self.errors),
            "uptime": round(time.monotonic() - self.started, 1) if self.started else 0,
            **self._routed_status(),
        }

    def _routed_status(self) -> dict[str, Any]:
        table = self.table
        if not isinstance(table, WeaveRoutes):
            return {}
        return {"overhead": self.config.overhead, "routing": table.status(),
                "peer_health": {name_text(n): h for n, h in self.peer_health().items()}}
