"""UDP sockets for the dataplane: big forced buffers, UDP_SEGMENT sends, UDP_GRO receives.

Sockets stay unconnected (connected UDP sockets report early ICMP errors as
ConnectionRefusedError on the next call). Sends never block for long: a full
send buffer waits a moment, then the batch is dropped and counted, so one
vanished peer cannot stall the others.
"""

from __future__ import annotations

import errno
import select
import socket
import struct

import attrs

from fabric.errors import BackendError

__all__ = ["UdpPort", "open_udp", "SOL_UDP", "UDP_SEGMENT", "UDP_GRO", "MAX_UDP_PAYLOAD"]

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
MAX_UDP_PAYLOAD = 65507
MAX_SEGMENTS = 64
BUFFER_BYTES = 8 << 20
_GRO_CMSG = socket.CMSG_SPACE(4)
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")


@attrs.define
class UdpPort:
    sock: socket.socket
    gso: bool
    gro: bool
    sndbuf: int
    rcvbuf: int
    reason: str = ""

    def as_dict(self) -> dict:
        return {"udp_gso": self.gso, "udp_gro": self.gro, "sndbuf": self.sndbuf,
                "rcvbuf": self.rcvbuf, "reason": self.reason}

    def send_batch(self, buf, seg: int, total: int, addr, drops: dict) -> int:
        """Send ``buf[:total]`` as datagrams of ``seg`` bytes (last may be shorter).

        Returns the number of datagrams handed to the kernel.
        """
        if total <= seg or not self.gso:
            sent = 0
            for off in range(0, total, seg):
                if self._send(buf[off:min(off + seg, total)], None, addr, drops):
                    sent += 1
            return sent
        step = min(MAX_SEGMENTS, MAX_UDP_PAYLOAD // seg) * seg
        sent = 0
        mv = memoryview(buf)
        for off in range(0, total, step):
            end = min(off + step, total)
            anc = [(SOL_UDP, UDP_SEGMENT, _U16.pack(seg))] if end - off > seg else None
            if self._send(mv[off:end], anc, addr, drops):
                sent += -(-(end - off) // seg)
        return sent

    def _send(self, data, anc, addr, drops: dict) -> bool:
        for attempt in (0, 1):
            try:
                if anc:
                    self.sock.sendmsg([data], anc, 0, addr)
                else:
                    self.sock.sendto(data, addr)
                return True
            except BlockingIOError:
                if attempt == 0:
                    select.select([], [self.sock], [], 0.002)
                    continue
                drops["tx_buffer_full"] = drops.get("tx_buffer_full", 0) + 1
            except OSError as exc:  # unreachable peer, EMSGSIZE...
                key = f"tx_{errno.errorcode.get(exc.errno, 'error').lower()}"
                drops[key] = drops.get(key, 0) + 1
                if exc.errno == errno.EIO and anc:  # no GSO on this path after all
                    self.gso = False
                return False
        return False

    def recv_batch(self, buf) -> tuple[int, int, tuple]:
        """Receive into ``buf``: (bytes, segment size or 0, sender address)."""
        n, anc, _flags, addr = self.sock.recvmsg_into([buf], _GRO_CMSG)
        seg = 0
        for level, kind, data in anc:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
                seg = _U16.unpack_from(data)[0] if len(data) < 4 else _I32.unpack_from(data)[0]
        return n, seg, addr


def _force_buffer(sock: socket.socket, force: int, plain: int, size: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    which = socket.SO_SNDBUF if plain == socket.SO_SNDBUF else socket.SO_RCVBUF
    return sock.getsockopt(socket.SOL_SOCKET, which)


def open_udp(address: str, port: int, *, offload: bool = True) -> UdpPort:
    """Bind a non-blocking UDP socket on ``address:port`` with GSO/GRO when the kernel has them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # no SO_REUSEADDR: two engines must never share a port silently
        sock.bind((address, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        raise BackendError(f"cannot bind UDP {address}:{port}: {exc}",
                           fix="pick a free Port or the node's own address") from exc
    sock.setblocking(False)
    snd = _force_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, BUFFER_BYTES)
    rcv = _force_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, BUFFER_BYTES)
    gso = gro = False
    reason = "" if offload else "offloads disabled by configuration"
    if offload:
        try:
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # probe; the size is given per send
            gso = True
        except OSError as exc:
            reason = f"UDP_SEGMENT unsupported ({exc.strerror})"
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            gro = True
        except OSError as exc:
            reason = "; ".join(r for r in (reason, f"UDP_GRO unsupported ({exc.strerror})") if r)
    return UdpPort(sock, gso, gro, snd, rcv, reason)
