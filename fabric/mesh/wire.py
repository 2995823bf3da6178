"""Mesh frame format and a defensive stream decoder.

Every frame on an established connection is ``u32 length | u8 type | body``
(length counts type + body). Bodies::

    GOSSIP     ch | src(6) | payload         neighbour gossip (periodic full or delta)
    BROADCAST  ch | src(6) | payload         relayed along src's broadcast tree
    UNICAST    ch | src(6) | dst(6) | payload  relayed along unicast next hops
    HEARTBEAT  (empty)
    HELLO      JSON header (first frame after the clear-text preamble)
    CLOSE      JSON ``{"reason": ..., ...}``: why the sender closes (e.g. name-collision)

``ch`` is a u8 length + ASCII channel name. Malformed, truncated or oversized
frames raise :class:`FrameError`; the decoder counts them by reason.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from typing import Any

import attrs

__all__ = ["Frame", "FrameError", "FrameDecoder", "encode_frame", "decode_body",
           "GOSSIP", "BROADCAST", "UNICAST", "HEARTBEAT", "HELLO", "CLOSE", "MAX_FRAME",
           "MAX_HELLO",
           "encode_hello", "decode_hello"]

GOSSIP, BROADCAST, UNICAST, HEARTBEAT, HELLO, CLOSE = 1, 2, 3, 4, 5, 6
MAX_FRAME = 8 << 20  # like weave's 10 MB cap on TCP messages
MAX_HELLO = 4096
_LEN = struct.Struct(">I")


class FrameError(ValueError):
    """A frame could not be decoded; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@attrs.frozen
class Frame:
    type: int
    channel: str = ""
    src: int = 0
    dst: int = 0
    payload: bytes = b""


def _name6(n: int) -> bytes:
    return n.to_bytes(6, "big")


def encode_frame(f: Frame) -> bytes:
    if f.type == HEARTBEAT:
        body = b""
    elif f.type in (HELLO, CLOSE):
        body = f.payload
    else:
        ch = f.channel.encode("ascii")
        if not 0 < len(ch) < 256:
            raise FrameError("bad-channel", f.channel)
        body = bytes([len(ch)]) + ch + _name6(f.src)
        if f.type == UNICAST:
            body += _name6(f.dst)
        body += f.payload
    if len(body) + 1 > MAX_FRAME:
        raise FrameError("oversized", f"{len(body)} bytes")
    return _LEN.pack(len(body) + 1) + bytes([f.type]) + body


def decode_body(data: bytes) -> Frame:
    """Decode ``type | body`` (the part after the length)."""
    if not data:
        raise FrameError("empty")
    t, body = data[0], data[1:]
    if t == HEARTBEAT:
        if body:
            raise FrameError("bad-heartbeat")
        return Frame(HEARTBEAT)
    if t in (HELLO, CLOSE):
        if len(body) > MAX_HELLO:
            raise FrameError("oversized-hello")
        return Frame(t, payload=bytes(body))
    if t not in (GOSSIP, BROADCAST, UNICAST):
        raise FrameError("bad-type", str(t))
    if not body:
        raise FrameError("truncated")
    n = body[0]
    need = 1 + n + 6 + (6 if t == UNICAST else 0)
    if n == 0 or len(body) < need:
        raise FrameError("truncated")
    try:
        ch = bytes(body[1:1 + n]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise FrameError("bad-channel") from exc
    if not ch.isprintable():
        raise FrameError("bad-channel")
    src = int.from_bytes(body[1 + n:7 + n], "big")
    dst = int.from_bytes(body[7 + n:13 + n], "big") if t == UNICAST else 0
    return Frame(t, ch, src, dst, bytes(body[need:]))


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns complete frames.

    A bad length poisons the stream (raises, caller closes the connection);
    a bad body raises too, after consuming that frame, so the caller may
    count it and go on or close. ``rejected`` counts reasons.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        self.rejected: Counter[str] = Counter()
        self.poisoned = False

    def feed(self, data: bytes) -> list[Frame]:
        if self.poisoned:
            raise FrameError("poisoned")
        self._buf += data
        out: list[Frame] = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if n == 0 or n > self.max_frame:
                self.poisoned = True
                self.rejected["bad-length"] += 1
                raise FrameError("bad-length", str(n))
            if len(self._buf) < 4 + n:
                break
            chunk = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            try:
                out.append(decode_body(chunk))
            except FrameError as exc:
                self.rejected[exc.reason] += 1
                raise
        return out

    def pending(self) -> int:
        return len(self._buf)


def encode_hello(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def decode_hello(payload: bytes) -> dict[str, Any]:
    """Validate the HELLO header: name (int), nickname (str), uid (int), version (int)."""
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError("bad-hello", "not JSON") from exc
    if not isinstance(d, dict):
        raise FrameError("bad-hello", "not an object")
    for key, typ in (("name", int), ("nickname", str), ("uid", int), ("version", int)):
        if not isinstance(d.get(key), typ) or isinstance(d.get(key), bool):
            raise FrameError("bad-hello", f"field {key}")
    if not 0 < d["name"] < (1 << 48) or len(d["nickname"]) > 64:
        raise FrameError("bad-hello", "name/nickname out of range")
    return d
