"""Internet checksum (RFC 1071) with big-integer arithmetic.

The ones' complement sum of 16-bit words is congruent to the big-endian value
of the bytes modulo 0xffff (2**16 == 1 mod 0xffff), so one ``int.from_bytes``
plus one ``%`` sums a whole packet at C speed.
"""

from __future__ import annotations

__all__ = ["fold", "raw_sum", "checksum", "pseudo_sum", "fill_ipv4_checksum"]

_from = int.from_bytes


def raw_sum(data) -> int:
    """Ones' complement sum of ``data`` (zero-padded to even length), not folded to 16 bits."""
    value = _from(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def fold(total: int) -> int:
    """Reduce a sum to 16 bits in ones' complement (0 stays 0, multiples of 0xffff give 0xffff)."""
    if total == 0:
        return 0
    r = total % 0xFFFF
    return r or 0xFFFF


def checksum(data) -> int:
    """The 16-bit Internet checksum of ``data``."""
    return (~fold(raw_sum(data))) & 0xFFFF


def pseudo_sum(addrs, proto: int, length: int) -> int:
    """Sum of the IPv4 pseudo header: ``addrs`` is the 8 bytes src+dst."""
    return _from(addrs, "big") % 0xFFFF + proto + length


def fill_ipv4_checksum(buf, off: int, ihl: int) -> None:
    """Recompute the IPv4 header checksum of the header at ``buf[off:off+ihl]`` in place."""
    buf[off + 10] = 0
    buf[off + 11] = 0
    c = (~fold(_from(buf[off:off + ihl], "big") % 0xFFFF)) & 0xFFFF
    buf[off + 10] = c >> 8
    buf[off + 11] = c & 0xFF
