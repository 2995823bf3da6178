"""L2 wire formats: one Ethernet (super-)frame per message, fragmented over UDP datagrams.

Classic datagram (flannel-style tests, :class:`~fabric.dataplane.peers.MacTable`) = 20-byte
header + fragment::

    type(1) index(1) count(1) flags(1) session(8) counter(8)

Routed datagram (weave sleeve, :class:`~fabric.dataplane.routing.WeaveRoutes`) = 33-byte
header + fragment::

    type(1) index(1) count(1) flags(1) ttl(1) origin(6) dst(6) session(8) counter(8)

``type`` is 0xD1/0xD3 (plain) or 0xD2/0xD4 (sealed: the message is AEAD ciphertext whose
associated data is the header with index 0, so origin, dst and ttl are authenticated per hop).
``origin`` is the peer whose bridge emitted the frame, ``dst`` the peer it is for, or
ff:ff:ff:ff:ff:ff for a flood; ``ttl`` is decremented by every relay. ``flags`` bit 0: the
message starts with a virtio_net_hdr (the frame may be a TSO super-frame with a partial
checksum); bit 1: the message is a control message (heartbeat), not a frame. A message is
encrypted once, whatever its size, then cut into equal datagrams so one UDP_SEGMENT send carries
it. Receivers reassemble per sender and session in order; a gap drops the message (TCP
retransmits, as on a lossy wire).
"""

from __future__ import annotations

import os
import struct

from fabric.dataplane.crypto import TAG_LEN, KeyPair, RxSession, TxSession
from fabric.dataplane.peers import PeerAddr

__all__ = ["HEADER_LEN", "ROUTED_HEADER_LEN", "T_PLAIN", "T_SEALED", "T_ROUTED_PLAIN",
           "T_ROUTED_SEALED", "F_VNET", "F_CONTROL", "FLOOD", "L2Sender", "L2Receiver"]

T_PLAIN = 0xD1
T_SEALED = 0xD2
T_ROUTED_PLAIN = 0xD3
T_ROUTED_SEALED = 0xD4
F_VNET = 1
F_CONTROL = 2
FLOOD = b"\xff" * 6
MAX_FRAGMENTS = 255
_CLASSIC = struct.Struct("!BBBB8sQ")
_ROUTED = struct.Struct("!BBBBB6s6s8sQ")
HEADER_LEN = _CLASSIC.size
ROUTED_HEADER_LEN = _ROUTED.size
_KNOWN = (T_PLAIN, T_SEALED, T_ROUTED_PLAIN, T_ROUTED_SEALED)


class L2Sender:
    """Builds the datagrams of one message for one peer (one thread per instance).

    ``routed``: the 33-byte header; :meth:`build` then takes ``route`` = (ttl, origin, dst).
    """

    def __init__(self, seg: int, pair: KeyPair | None = None, psk: bytes = b"",
                 cipher: str = "aesgcm", routed: bool = False) -> None:
        self.seg = seg  # datagram size
        self.hdr = _ROUTED if routed else _CLASSIC
        self.chunk = seg - self.hdr.size
        self.pair = pair
        self.psk = psk
        self.cipher = cipher
        self.kind = (T_ROUTED_SEALED if routed else T_SEALED) if pair is not None \
            else (T_ROUTED_PLAIN if routed else T_PLAIN)
        self.session = os.urandom(8)
        self.counter = 0
        self._tx: dict[PeerAddr, TxSession] = {}
        self.out = bytearray(70000)
        self.why = ""  # why the last build returned 0

    def build(self, message, flags: int, peer: PeerAddr, route: tuple = ()) -> int:
        """Fill ``self.out`` with the datagrams for ``message``; returns bytes used.

        0: nothing to send, :attr:`why` says why (``too_big``, or ``no_key`` for a sealed
        message to a peer whose public key is not known yet).
        """
        chunk, kind = self.chunk, self.kind
        self.why = "too_big"
        if self.pair is not None:
            tx = self._tx.get(peer)
            if tx is None or tx.exhausted:
                if len(peer.public_key) != 32:
                    self.why = "no_key"
                    return 0
                tx = self._tx[peer] = TxSession(self.pair, peer.public_key, self.psk, self.cipher)
            count = -(-(len(message) + TAG_LEN) // chunk)
            if count > MAX_FRAGMENTS:
                return 0
            header = self.hdr.pack(kind, 0, count, flags, *route, tx.session, tx.counter + 1)
            _c, body = tx.seal(message, header)
        else:
            count = -(-len(message) // chunk)
            if count > MAX_FRAGMENTS:
                return 0
            self.counter += 1
            header = self.hdr.pack(kind, 0, count, flags, *route, self.session, self.counter)
            body = message
        hlen = len(header)
        total = len(body) + count * hlen
        out = self.out
        if len(out) < total:
            out.extend(bytes(total - len(out)))
        o = 0
        view = memoryview(body)  # slices without copies: each byte is copied once, into out
        for i in range(count):  # the header is the same for every fragment but its index
            part = view[i * chunk:(i + 1) * chunk]
            n = len(part)
            out[o:o + hlen] = header
            out[o + 1] = i
            o += hlen
            out[o:o + n] = part
            o += n
        return o

    def forget(self, peer: PeerAddr) -> None:
        self._tx.pop(peer, None)


class L2Receiver:
    """Reassembles and opens messages (receiver thread only). ``drops`` counts by reason.

    After :meth:`feed` returned a message of the routed format, :attr:`route` holds its
    (ttl, origin, dst).
    """

    MAX_SESSIONS = 8  # per peer address: its tx, relay and heartbeat senders, plus restarts
    MAX_PARTIAL = 64  # messages being reassembled, all peers together

    def __init__(self, drops: dict, pair: KeyPair | None = None, psk: bytes = b"",
                 cipher: str = "aesgcm", routed: bool = False) -> None:
        self.drops = drops
        self.pair = pair
        self.psk = psk
        self.cipher = cipher
        self.hdr = _ROUTED if routed else _CLASSIC
        self.kind = (T_ROUTED_SEALED if routed else T_SEALED) if pair is not None \
            else (T_ROUTED_PLAIN if routed else T_PLAIN)
        self.route: tuple = ()
        # (sender ip, session) -> (header without index, parts)
        self._partial: dict[tuple[str, bytes], tuple[bytes, list[bytes]]] = {}
        self._rx: dict[tuple[str, bytes], RxSession] = {}

    def _drop(self, why: str) -> None:
        self.drops[why] = self.drops.get(why, 0) + 1

    def feed(self, dgram, peer: PeerAddr) -> tuple[bytes, int] | None:
        """Take one datagram from ``peer``; return (message, flags) when one is complete.

        Hot path (one call per datagram): only the bytes needed to reassemble are read here;
        the header is unpacked once per complete message.
        """
        hlen = self.hdr.size
        if len(dgram) <= hlen:
            self._drop("truncated")
            return None
        fields = self.hdr.unpack_from(dgram)
        kind, idx, count = fields[0], fields[1], fields[2]
        if kind != self.kind:
            self._drop("wrong_type" if kind in _KNOWN else "garbage")
            return None
        if count == 0 or idx >= count:
            self._drop("bad_header")
            return None
        if count == 1:
            body = bytes(dgram[hlen:])
            header = bytes(dgram[:hlen])
        else:
            key = (peer.ip, fields[-2])  # per sender and session: several threads send
            cur = self._partial.get(key)
            if idx == 0:
                if cur is not None:
                    self._drop("incomplete")
                elif len(self._partial) >= self.MAX_PARTIAL:
                    del self._partial[next(iter(self._partial))]
                    self._drop("incomplete")
                self._partial[key] = (fields[2:], bytes(dgram[:hlen]), [bytes(dgram[hlen:])])
                return None
            # every fragment repeats the header but for its index
            if cur is None or len(cur[2]) != idx or fields[2:] != cur[0]:
                if cur is not None:
                    del self._partial[key]
                self._drop("incomplete")
                return None
            cur[2].append(bytes(dgram[hlen:]))
            if idx + 1 < count:
                return None
            del self._partial[key]
            body = b"".join(cur[2])
            header = cur[1]
        flags, session, counter = fields[3], fields[-2], fields[-1]
        self.route = fields[4:-2]
        if self.pair is None:
            return body, flags
        rx = self._rx.get((peer.ip, session))
        fresh = rx is None
        if fresh:
            if len(peer.public_key) != 32:
                self._drop("no_key")
                return None
            rx = RxSession(self.pair, peer.public_key, self.psk, self.cipher, session)
        plain = rx.open(counter, body, header)
        if isinstance(plain, str):
            self._drop(plain)
            return None
        if fresh:  # remember only sessions that authenticated
            mine = [k for k in self._rx if k[0] == peer.ip]
            if len(mine) >= self.MAX_SESSIONS:
                del self._rx[mine[0]]
            self._rx[(peer.ip, session)] = rx
        return plain, flags

    @property
    def pending(self) -> int:
        """Messages waiting for more fragments (bounded by MAX_PARTIAL)."""
        return len(self._partial)

    def forget(self, ip: str) -> None:
        for key in [k for k in self._partial if k[0] == ip]:
            del self._partial[key]
        for key in [k for k in self._rx if k[0] == ip]:
            del self._rx[key]
