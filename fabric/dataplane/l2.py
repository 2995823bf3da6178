"""L2 wire format: one Ethernet (super-)frame per message, fragmented over UDP datagrams.

Datagram = 20-byte header + fragment::

    type(1) index(1) count(1) flags(1) session(8) counter(8)

``type`` is 0xD1 (plain) or 0xD2 (sealed: the message is AEAD ciphertext whose
associated data is the header with index 0). ``flags`` bit 0: the message
starts with a virtio_net_hdr (the frame may be a TSO super-frame with a partial
checksum). A message is encrypted once, whatever its size, then cut into
equal datagrams so one UDP_SEGMENT send carries it. Receivers reassemble per
sender in order; a gap drops the message (TCP retransmits, as on a lossy wire).
"""

from __future__ import annotations

import os
import struct

from fabric.dataplane.crypto import TAG_LEN, KeyPair, RxSession, TxSession
from fabric.dataplane.peers import PeerAddr

__all__ = ["HEADER_LEN", "T_PLAIN", "T_SEALED", "F_VNET", "L2Sender", "L2Receiver"]

HEADER_LEN = 20
T_PLAIN = 0xD1
T_SEALED = 0xD2
F_VNET = 1
MAX_FRAGMENTS = 255
_HDR = struct.Struct("!BBBB8sQ")
_pack_hdr = _HDR.pack_into


class L2Sender:
    """Builds the datagrams of one message for one peer (sender thread only)."""

    def __init__(self, seg: int, pair: KeyPair | None = None, psk: bytes = b"",
                 cipher: str = "aesgcm") -> None:
        self.seg = seg  # datagram size
        self.chunk = seg - HEADER_LEN
        self.pair = pair
        self.psk = psk
        self.cipher = cipher
        self.session = os.urandom(8)
        self.counter = 0
        self._tx: dict[PeerAddr, TxSession] = {}
        self.out = bytearray(70000)

    def build(self, message, flags: int, peer: PeerAddr) -> int:
        """Fill ``self.out`` with the datagrams for ``message``; returns bytes used (0: too big)."""
        if self.pair is not None:
            tx = self._tx.get(peer)
            if tx is None or tx.exhausted:
                tx = self._tx[peer] = TxSession(self.pair, peer.public_key, self.psk, self.cipher)
            length = len(message) + TAG_LEN
            count = -(-length // self.chunk)
            if count > MAX_FRAGMENTS:
                return 0
            counter = tx.counter + 1
            aad = _HDR.pack(T_SEALED, 0, count, flags, tx.session, counter)
            _c, body = tx.seal(message, aad)
            kind, session = T_SEALED, tx.session
        else:
            self.counter += 1
            counter, body, session, kind = self.counter, message, self.session, T_PLAIN
            count = -(-len(body) // self.chunk)
            if count > MAX_FRAGMENTS:
                return 0
        total = len(body) + count * HEADER_LEN
        out = self.out
        if len(out) < total:
            out.extend(bytes(total - len(out)))
        chunk = self.chunk
        o = 0
        for i in range(count):
            part = body[i * chunk:(i + 1) * chunk]
            _pack_hdr(out, o, kind, i, count, flags, session, counter)
            o += HEADER_LEN
            out[o:o + len(part)] = part
            o += len(part)
        return o

    def forget(self, peer: PeerAddr) -> None:
        self._tx.pop(peer, None)


class L2Receiver:
    """Reassembles and opens messages (receiver thread only). ``drops`` counts by reason."""

    MAX_SESSIONS = 4

    def __init__(self, drops: dict, pair: KeyPair | None = None, psk: bytes = b"",
                 cipher: str = "aesgcm") -> None:
        self.drops = drops
        self.pair = pair
        self.psk = psk
        self.cipher = cipher
        self._partial: dict[str, tuple] = {}  # sender ip -> (session, counter, count, parts)
        self._rx: dict[tuple[str, bytes], RxSession] = {}

    def _drop(self, why: str) -> None:
        self.drops[why] = self.drops.get(why, 0) + 1

    def feed(self, dgram, peer: PeerAddr) -> tuple[bytes, int] | None:
        """Take one datagram from ``peer``; return (message, flags) when one is complete."""
        if len(dgram) <= HEADER_LEN:
            self._drop("truncated")
            return None
        kind, idx, count, flags, session, counter = _HDR.unpack_from(dgram)
        if kind != (T_SEALED if self.pair is not None else T_PLAIN):
            self._drop("wrong_type" if kind in (T_PLAIN, T_SEALED) else "garbage")
            return None
        if count == 0 or idx >= count:
            self._drop("bad_header")
            return None
        part = bytes(dgram[HEADER_LEN:])
        if count == 1:
            body = part
        else:
            cur = self._partial.get(peer.ip)
            if idx == 0:
                if cur is not None:
                    self._drop("incomplete")
                cur = (session, counter, count, flags, [part])
                self._partial[peer.ip] = cur
                return None
            if cur is None or cur[0] != session or cur[1] != counter or cur[2] != count \
                    or len(cur[4]) != idx or cur[3] != flags:
                if cur is not None:
                    del self._partial[peer.ip]
                self._drop("incomplete")
                return None
            cur[4].append(part)
            if idx + 1 < count:
                return None
            del self._partial[peer.ip]
            body = b"".join(cur[4])
        if self.pair is None:
            return body, flags
        rx = self._rx.get((peer.ip, session))
        fresh = rx is None
        if fresh:
            if len(peer.public_key) != 32:
                self._drop("no_key")
                return None
            rx = RxSession(self.pair, peer.public_key, self.psk, self.cipher, session)
        aad = _HDR.pack(T_SEALED, 0, count, flags, session, counter)
        plain = rx.open(counter, body, aad)
        if isinstance(plain, str):
            self._drop(plain)
            return None
        if fresh:  # remember only sessions that authenticated
            mine = [k for k in self._rx if k[0] == peer.ip]
            if len(mine) >= self.MAX_SESSIONS:
                del self._rx[mine[0]]
            self._rx[(peer.ip, session)] = rx
        return plain, flags

    def forget(self, ip: str) -> None:
        self._partial.pop(ip, None)
        for key in [k for k in self._rx if k[0] == ip]:
            del self._rx[key]
