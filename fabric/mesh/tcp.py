"""Real-socket mesh peers: a :class:`Router` on an asyncio loop thread, TCP connections.

Connection set-up (both sides send, then read)::

    preamble  b"NFMESH" | u8 min_version | u8 max_version | u8 flags (1 = password) | key(32)
    then frames: u32 length | body, where body is a wire frame (type | ...) sealed with
    ChaCha20-Poly1305 when a password is set; the first frame is HELLO (name, nickname, uid).

Heartbeats every ``heartbeat`` seconds; a connection silent for 3 heartbeats is
closed. Bad preambles, versions, passwords and frames are refused, counted in
``router.rejected`` and logged (rate-limited, with the remote address); the peer keeps
running. Before a peer is authenticated nothing big is read: the HELLO frame's length is
checked against its 4 KiB limit before its body is read, at most ``max_handshakes``
inbound handshakes run at once (more are closed at once, counted as ``handshake:busy``)
and each must finish within ``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fabric.errors import ConfigError, FabricError
from fabric.mesh.crypto import Ephemeral, Session, password_key
from fabric.mesh.db import MeshDB
from fabric.mesh.names import new_name
from fabric.mesh.router import Router, RouterConfig
from fabric.mesh.wire import (
    HEARTBEAT,
    HELLO,
    MAX_FRAME,
    MAX_HELLO,
    Frame,
    FrameError,
    decode_body,
    decode_hello,
    encode_frame,
    encode_hello,
)

__all__ = ["MeshNode", "DEFAULT_PORT", "PROTOCOL_MIN", "PROTOCOL_MAX"]

DEFAULT_PORT = 6783
PROTOCOL_MIN = PROTOCOL_MAX = 1
_MAGIC = b"NFMESH"
_PRE = struct.Struct(">6sBBB32s")
T = TypeVar("T")


class TcpConn:
    def __init__(self, node: MeshNode, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, address: str, outbound: bool) -> None:
        self.node, self.reader, self.writer = node, reader, writer
        self.address, self.outbound = address, outbound
        self.remote, self.remote_nickname, self.remote_uid = 0, "", 0
        self.session: Session | None = None
        self.open = True
        self.last_rx = time.monotonic()
        self.registered = False

    def alive(self) -> bool:
        """Heard from within 1.5 heartbeats (a peer that restarted leaves a silent one)."""
        return self.open and time.monotonic() - self.last_rx < 1.5 * self.node.heartbeat

    def send(self, data: bytes) -> None:
        if not self.open:
            return
        body = data[4:]
        if self.session is not None:
            body = self.session.seal(body)
        self.writer.write(struct.pack(">I", len(body)) + body)

    def close(self, reason: str) -> None:
        if self.open:
            self.open = False
            self.writer.close()
            if self.registered:
                self.node.router.remove_connection(self, reason)

    async def read_frame(self, limit: int = MAX_FRAME) -> Frame:
        """One frame; a length above ``limit`` (+ the AEAD tag) is refused before a byte
        of the body is read, so an unauthenticated sender cannot make us buffer it."""
        head = await self.reader.readexactly(4)
        (n,) = struct.unpack(">I", head)
        if n == 0 or n > limit + 16:
            raise FrameError("bad-length" if limit == MAX_FRAME else "oversized-hello", str(n))
        body = await self.reader.readexactly(n)
        self.last_rx = time.monotonic()
        if self.session is not None:
            body = self.session.open(body)
        return decode_body(body)


class MeshNode:
    """One real mesh peer. All router work runs on the node's loop thread; the public
    methods are thread-safe. ``db`` keeps the name and connection targets."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 nickname: str = "", password: str | bytes | None = None,
                 db: MeshDB | None = None, name: int | None = None,
                 config: RouterConfig | None = None, heartbeat: float = 1.0,
                 handshake_timeout: float = 5.0, max_handshakes: int = 64) -> None:
        self.host, self.port, self.db = host, port, db
        if isinstance(password, str):
            password = password.encode()
        self.password = password or None
        if self.password:
            password_key(self.password)  # derive once, off the loop
        if name is None and db is not None:
            name = db.get("name")
        self.name = name if name is not None else new_name()
        if db is not None:
            db.put("name", self.name)
        self.heartbeat, self.handshake_timeout = heartbeat, handshake_timeout
        self.max_handshakes, self.handshaking = max_handshakes, 0
        self.loop = asyncio.new_event_loop()
        # uid orders incarnations: start time (ms) in the high bits, so of two live peers
        # with one name (a copied state directory) every peer agrees which came first
        now_ms = int(time.time() * 1000)
        uid = (now_ms << 20) | int.from_bytes(os.urandom(3), "big") >> 4
        self.router = Router(self.name, nickname or f"peer-{self.name & 0xffff:04x}", self,
                             config, version=now_ms, uid=uid)
        if db is not None:
            self.router.connect(db.get("targets", []))
            self.router.on_targets_changed = lambda t: db.put("targets", t)
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    # ---- Env ------------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        """Wall-clock seconds: comparable across hosts (loop time is not)."""
        return time.time()

    def call_later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, fn)

    def dial(self, router: Router, address: str) -> None:
        self.loop.create_task(self._dial(address))

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> MeshNode:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._serve())
            except OSError as exc:
                ready.set_exception(ConfigError(
                    f"cannot listen on {self.host}:{self.port}: {exc.strerror}",
                    fix="pick a free port or another bind address"))
                return
            ready.set_result(None)
            self.loop.run_forever()

        self._thread = threading.Thread(target=main, name=f"mesh-{self.router.nickname}",
                                        daemon=True)
        self._thread.start()
        ready.result(timeout=30)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.router.start()
        self.loop.call_later(self.heartbeat, self._heartbeats)

    def stop(self) -> None:
        if self._thread is None:
            return

        async def shutdown() -> None:
            self.router.stop()
            if self._server is not None:
                self._server.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (or raise)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn(*args)  # not started yet (or on the loop): nothing runs concurrently

        async def run() -> T:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=timeout)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self, addresses: list[str]) -> None:
        for a in addresses:
            _split(a)
        self.call(self.router.connect, list(addresses))

    def forget(self, addresses: list[str]) -> None:
        self.call(self.router.forget, list(addresses))

    def describe(self) -> dict[str, Any]:
        return self.call(self.router.describe)

    # ---- connections ------------------------------------------------------------------
    def _heartbeats(self) -> None:
        now = time.monotonic()
        beat = encode_frame(Frame(HEARTBEAT))
        for c in list(self.router.conns.values()):
            if isinstance(c, TcpConn):
                if now - c.last_rx > 3 * self.heartbeat:
                    c.close("heartbeat timeout")
                else:
                    c.send(beat)
        if self._thread is not None:
            self.loop.call_later(self.heartbeat, self._heartbeats)

    async def _dial(self, address: str) -> None:
        host, port = _split(address)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, local_addr=(self.host, 0)),
                self.handshake_timeout)
        except (TimeoutError, OSError) as exc:
            self.router.dial_failed(address, f"connect: {exc or 'timed out'}")
            return
        conn = TcpConn(self, reader, writer, address, True)
        await self._run(conn)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        conn = TcpConn(self, reader, writer, f"{peer[0]}:{peer[1]}", False)
        if self.handshaking >= self.max_handshakes:
            self._refused(conn, "busy", f"{self.handshaking} handshakes already running")
            return
        self.handshaking += 1
        await self._run(conn)

    def _refused(self, conn: TcpConn, reason: str, detail: str) -> None:
        if not detail.startswith(reason):
            detail = f"{reason}: {detail}"
        self.router.rejected[f"handshake:{reason}"] += 1
        conn.close(f"handshake failed: {detail}")
        self.router.log(logging.WARNING, f"handshake:{reason}", conn.address.rpartition(":")[0],
                        "mesh: refused %s connection %s %s: %s",
                        "outbound" if conn.outbound else "inbound",
                        "to" if conn.outbound else "from", conn.address, detail)

    async def _run(self, conn: TcpConn) -> None:
        try:
            await asyncio.wait_for(self._handshake(conn), self.handshake_timeout)
        except (TimeoutError, FrameError, asyncio.IncompleteReadError, OSError, FabricError) as exc:
            reason = exc.reason if isinstance(exc, FrameError) else type(exc).__name__
            self._refused(conn, reason, str(exc) or "timed out")
            if conn.outbound:
                self.router.dial_failed(conn.address, f"handshake failed: {exc}")
            return
        finally:
            if not conn.outbound:
                self.handshaking -= 1
        if not self.router.add_connection(conn):
            return
        conn.registered = True
        await self._read_loop(conn)

    async def _handshake(self, conn: TcpConn) -> None:
        eph = Ephemeral()
        flags = 1 if self.password else 0
        conn.writer.write(_PRE.pack(_MAGIC, PROTOCOL_MIN, PROTOCOL_MAX, flags, eph.public))
        raw = await conn.reader.readexactly(_PRE.size)
        magic, vmin, vmax, their_flags, their_key = _PRE.unpack(raw)
        if magic != _MAGIC:
            raise FrameError("bad-preamble", "not a netfabric mesh peer")
        if max(vmin, PROTOCOL_MIN) > min(vmax, PROTOCOL_MAX):
            raise FrameError("bad-version", f"peer speaks {vmin}-{vmax}, "
                             f"we speak {PROTOCOL_MIN}-{PROTOCOL_MAX}")
        if (their_flags & 1) != flags:
            raise FrameError("password-mismatch", "one side has a password, the other not")
        if self.password:
            conn.session = eph.session(their_key, self.password, conn.outbound)
        conn.send(encode_frame(Frame(HELLO, payload=encode_hello(
            {"name": self.name, "nickname": self.router.nickname, "uid": self.router.uid,
             "version": PROTOCOL_MAX}))))
        frame = await conn.read_frame(limit=MAX_HELLO + 1)
        if frame.type != HELLO:
            raise FrameError("bad-hello", "first frame is not HELLO")
        hello = decode_hello(frame.payload)
        conn.remote, conn.remote_nickname = hello["name"], hello["nickname"]
        conn.remote_uid = hello["uid"]

    async def _read_loop(self, conn: TcpConn) -> None:
        reason = "closed by peer"
        try:
            while conn.open:
                try:
                    frame = await conn.read_frame()
                except FrameError as exc:
                    self.router.rejected[exc.reason] += 1
                    if exc.reason in ("bad-length", "auth-failed"):
                        reason = f"stream broken: {exc}"
                        break
                    continue  # a bad body: counted, the stream is still in sync
                if frame.type not in (HEARTBEAT, HELLO) and conn.open:
                    self.router.handle_frame(conn, frame, len(frame.payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            reason = f"connection lost: {type(exc).__name__}"
        conn.close(reason)


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"mesh peer address {address!r} is invalid",
                          fix="use HOST:PORT, e.g. 127.0.0.2:6783")
    return host, int(port)
