"""IPv4 packet work for the L3 (flannel udp) path: one inner IPv4 packet per UDP datagram.

Send side: a TUN super-packet (TSO/USO, partial checksum) is cut into MTU-sized
IPv4 packets with complete headers and checksums, back to back in one buffer,
so a single UDP_SEGMENT send puts one inner packet in each datagram — the
format flannel's udp backend reads. Receive side: consecutive datagrams of one
TCP flow are merged back into a super-packet (``coalesce_tcp4``) and written to
the TUN device with a virtio header, the userspace GRO of wireguard-go's
``tcp_offload_linux.go`` idea.
"""

from __future__ import annotations

import struct

try:  # optional: vectorised checksums over all segments of a super-packet
    import numpy as _np
except ImportError:  # pragma: no cover - the pure-Python path below is complete
    _np = None

from fabric.dataplane.csum import fill_ipv4_checksum, fold

__all__ = [
    "IPPROTO_ICMP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "segment_tcp4",
    "segment_udp4",
    "complete_checksum",
    "coalesce_tcp4",
    "icmp_unreachable",
    "valid_ipv4",
]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_FIN, _SYN, _RST, _PSH, _ACK, _URG, _ECE, _CWR = 1, 2, 4, 8, 16, 32, 64, 128
_from = int.from_bytes
_H = struct.Struct("!H")
_I = struct.Struct("!I")
_pack_H = _H.pack_into
_pack_I = _I.pack_into
_pack_HH = struct.Struct("!HH").pack_into


def valid_ipv4(pkt, n: int) -> int:
    """Header length of a well-formed IPv4 packet of exactly ``n`` bytes, else 0."""
    if n < 20 or pkt[0] >> 4 != 4:
        return 0
    ihl = (pkt[0] & 15) * 4
    if ihl < 20 or ihl > n or (pkt[2] << 8 | pkt[3]) != n:
        return 0
    return ihl


def complete_checksum(buf, off: int, end: int, csum_start: int, csum_offset: int) -> bool:
    """Finish a CHECKSUM_PARTIAL packet in ``buf[off:end]``: the field holds the pseudo sum."""
    start = off + csum_start
    field = start + csum_offset
    if csum_start < 20 or field + 2 > end:
        return False
    data = buf[start:end]
    value = _from(data, "big")
    if len(data) & 1:
        value <<= 8
    c = (~fold(value % 0xFFFF)) & 0xFFFF
    if c == 0 and buf[off + 9] == IPPROTO_UDP:
        c = 0xFFFF
    buf[field] = c >> 8
    buf[field + 1] = c & 0xFF
    return True


def segment_tcp4(pkt, mss: int, out: bytearray, full_csum: bool = True,
                 use_numpy: bool = True) -> tuple[int, int, int]:
    """Cut TCP/IPv4 super-packet ``pkt`` (memoryview) into ``mss``-payload packets in ``out``.

    Returns (segments, size of a full segment, bytes used); 0 segments if ``pkt`` is malformed.
    Per segment: IP total length, ID (+1 each), header checksum; TCP sequence,
    flags (CWR on the first only, FIN/PSH on the last only) and checksum — the
    full checksum, or with ``full_csum=False`` only the pseudo-header sum
    (CHECKSUM_PARTIAL, for receivers that finish it, i.e. this engine).
    """
    n = len(pkt)
    ihl = valid_ipv4(pkt, n)
    if not ihl or pkt[9] != IPPROTO_TCP or n < ihl + 20 or mss <= 0:
        return 0, 0, 0
    thl = (pkt[ihl + 12] >> 4) * 4
    hlen = ihl + thl
    if thl < 20 or hlen > n:
        return 0, 0, 0
    count = max(1, -(-(n - hlen) // mss))
    full = hlen + mss
    need = count * full
    if len(out) < need:
        out.extend(bytes(need - len(out)))
    ip_id = pkt[4] << 8 | pkt[5]
    seq = _I.unpack_from(pkt, ihl + 4)[0]
    flags = pkt[ihl + 13]
    tmpl = bytearray(pkt[:hlen])
    tmpl[2:6] = b"\0\0\0\0"  # length, id
    tmpl[10:12] = b"\0\0"
    tmpl[ihl + 4:ihl + 8] = b"\0\0\0\0"  # seq
    tmpl[ihl + 13] = 0
    tmpl[ihl + 16:ihl + 18] = b"\0\0"
    ip_base = _from(tmpl[:ihl], "big") % 0xFFFF
    pseudo = _from(pkt[12:20], "big") % 0xFFFF + IPPROTO_TCP + thl
    tcp_base = _from(tmpl[ihl:], "big") % 0xFFFF + pseudo
    header = bytes(tmpl)
    t16, t17, t13 = ihl + 16, ihl + 17, ihl + 13
    last = count - 1
    first = 0
    if _np is not None and use_numpy and last >= 8 and not full & 1:  # else Python is cheaper
        _np_segments(pkt, out, last, full, ihl, hlen, mss, ip_id, seq, flags, ip_base,
                     pseudo, full_csum, header)
        first = last
    o = first * full
    p = hlen + first * mss
    for i in range(first, count):
        plen = mss if i < last else n - p
        end = o + hlen
        out[o:end] = header
        data = pkt[p:p + plen]
        out[end:end + plen] = data
        length = hlen + plen
        ident = (ip_id + i) & 0xFFFF
        c = (~fold(ip_base + length + ident)) & 0xFFFF
        sq = (seq + i * mss) & 0xFFFFFFFF
        f = flags
        if i:
            f &= ~_CWR
        if i < last:
            f &= ~(_FIN | _PSH)
        _pack_HH(out, o + 2, length, ident)
        _pack_H(out, o + 10, c)
        _pack_I(out, o + ihl + 4, sq)
        out[o + t13] = f
        if full_csum:
            value = _from(data, "big")
            if plen & 1:
                value <<= 8
            total = tcp_base + plen + (sq >> 16) + (sq & 0xFFFF) + f + value % 0xFFFF
            c = (~fold(total)) & 0xFFFF
        else:
            c = fold(pseudo + plen)
        out[o + t16] = c >> 8
        out[o + t17] = c & 0xFF
        o += length
        p += plen
    return count, full, o


def _fold_np(sums):
    r = sums % 0xFFFF
    r[r == 0] = 0xFFFF
    return ~r & 0xFFFF


def _np_segments(pkt, out, k, full, ihl, hlen, mss, ip_id, seq, flags, ip_base, pseudo,
                 full_csum, header) -> None:
    """The first ``k`` (full-size) segments of :func:`segment_tcp4`, vectorised with numpy."""
    np = _np
    seg = np.frombuffer(out, dtype=np.uint8, count=k * full).reshape(k, full)
    tmpl = bytearray(header)
    _pack_H(tmpl, 2, full)
    tmpl[ihl + 13] = flags & ~(_FIN | _PSH | _CWR)
    seg[:, :hlen] = np.frombuffer(tmpl, dtype=np.uint8)
    src = np.frombuffer(pkt, dtype=np.uint8, count=k * mss, offset=hlen)
    seg[:, hlen:] = src.reshape(k, mss)
    words = np.frombuffer(out, dtype=">u2", count=k * full // 2).reshape(k, full // 2)
    idx = _ARANGE[:k] if k <= len(_ARANGE) else np.arange(k, dtype=np.uint64)
    ids = (idx + ip_id) & 0xFFFF
    words[:, 2] = ids
    words[:, 5] = _fold_np(ids + (ip_base + full))
    seqs = (idx * mss + seq) & 0xFFFFFFFF
    words[:, (ihl + 4) // 2] = seqs >> 16
    words[:, (ihl + 6) // 2] = seqs & 0xFFFF
    if flags & _CWR:
        out[ihl + 13] |= _CWR
    if full_csum:
        # Sum whole rows in native order (contiguous, 32-bit words when aligned): the valid
        # IP header adds 0 mod 0xffff, and a byte-swapped ones' complement sum is the sum
        # of the byte-swapped data (RFC 1071), so swap once at the end.
        wide = "<u4" if not full & 3 else "<u2"
        native = np.frombuffer(out, dtype=wide, count=k * full // int(wide[-1])).reshape(k, -1)
        r = native.sum(axis=1, dtype=np.uint64) % 0xFFFF
        swapped = ((r & 0xFF) << 8) | (r >> 8)
        words[:, (ihl + 16) // 2] = _fold_np(swapped + (pseudo + mss))
    else:
        words[:, (ihl + 16) // 2] = fold(pseudo + mss)


_ARANGE = _np.arange(256, dtype=_np.uint64) if _np is not None else None


def segment_udp4(pkt, size: int, out: bytearray) -> tuple[int, int, int]:
    """Cut a UDP/IPv4 super-datagram (USO) into ``size``-payload datagrams, like the kernel."""
    n = len(pkt)
    ihl = valid_ipv4(pkt, n)
    if not ihl or pkt[9] != IPPROTO_UDP or n < ihl + 8 or size <= 0:
        return 0, 0, 0
    hlen = ihl + 8
    plen_total = n - hlen
    count = max(1, -(-plen_total // size))
    full = hlen + size
    need = count * full
    if len(out) < need:
        out.extend(bytes(need - len(out)))
    ip_id = pkt[4] << 8 | pkt[5]
    addr_sum = _from(pkt[12:20], "big") % 0xFFFF + IPPROTO_UDP
    header = bytes(pkt[:hlen])
    o, p = 0, hlen
    for i in range(count):
        plen = size if i < count - 1 else n - p
        out[o:o + hlen] = header
        out[o + hlen:o + hlen + plen] = pkt[p:p + plen]
        _pack_H(out, o + 2, hlen + plen)
        _pack_H(out, o + 4, (ip_id + i) & 0xFFFF)
        fill_ipv4_checksum(out, o, ihl)
        u = o + ihl
        _pack_H(out, u + 4, 8 + plen)
        out[u + 6] = 0
        out[u + 7] = 0
        value = _from(out[u:u + 8 + plen], "big")
        if plen & 1:
            value <<= 8
        c = (~fold(value % 0xFFFF + addr_sum + 8 + plen)) & 0xFFFF
        _pack_H(out, u + 6, c or 0xFFFF)
        o += hlen + plen
        p += plen
    return count, full, o


def coalesce_tcp4(dgrams: list, start: int, limit: int = 65535) -> tuple[int, int, int]:
    """How many datagrams from ``dgrams[start]`` on form one TCP stream run.

    ``dgrams`` are memoryviews of valid IPv4 packets. Returns (count, header
    length, mss); count 1 means "write alone". A run has identical IP/TCP headers
    except ID, checksums, sequence and PSH/CWR, contiguous sequence numbers,
    equal payloads except a shorter last one, no SYN/FIN/RST/URG, and stays
    within ``limit`` bytes.
    """
    d0 = dgrams[start]
    if d0[9] != IPPROTO_TCP or (d0[6] & 0x3F) or d0[7]:  # fragments are never merged
        return 1, 0, 0
    ihl = (d0[0] & 15) * 4
    n0 = len(d0)
    if n0 < ihl + 20:
        return 1, 0, 0
    thl = (d0[ihl + 12] >> 4) * 4
    hlen = ihl + thl
    mss = n0 - hlen
    f0 = d0[ihl + 13]
    if mss <= 0 or thl < 20 or hlen > n0 or f0 & (_FIN | _SYN | _RST | _URG | _PSH):
        return 1, 0, 0
    end = len(dgrams)
    if start + 1 >= end:
        return 1, 0, 0
    seq = _I.unpack_from(d0, ihl + 4)[0]
    id_ver = d0[0:2]
    frag_ttl = d0[6:10]
    addrs_ports = d0[12:ihl + 4]
    ack_off = d0[ihl + 8:ihl + 13]
    win = d0[ihl + 14:ihl + 16]
    opts = d0[ihl + 18:hlen]
    base_flags = f0 & ~_CWR
    total = n0
    j = start + 1
    while j < end:
        d = dgrams[j]
        n = len(d)
        if n < hlen or n - hlen > mss or total + n - hlen > limit:
            break
        if (d[0:2] != id_ver or d[6:10] != frag_ttl or d[12:ihl + 4] != addrs_ports
                or d[ihl + 8:ihl + 13] != ack_off or d[ihl + 14:ihl + 16] != win
                or d[ihl + 18:hlen] != opts):
            break
        seq += mss
        if _I.unpack_from(d, ihl + 4)[0] != seq & 0xFFFFFFFF or n == hlen:
            break
        f = d[ihl + 13]
        if f & ~_PSH != base_flags:
            break
        total += n - hlen
        j += 1
        if f & _PSH or n - hlen < mss:
            break  # the run ends with a pushed or short segment
    return j - start, hlen, mss


def merged_header(d0, count_bytes: int, hlen: int, last_flags: int) -> bytearray:
    """Header of a merged super-packet: total length, IP checksum, TCP pseudo sum (partial)."""
    ihl = (d0[0] & 15) * 4
    hdr = bytearray(d0[:hlen])
    _pack_H(hdr, 2, count_bytes)
    fill_ipv4_checksum(hdr, 0, ihl)
    hdr[ihl + 13] = hdr[ihl + 13] | (last_flags & _PSH)
    pseudo = fold(_from(hdr[12:20], "big") % 0xFFFF + IPPROTO_TCP + count_bytes - ihl)
    _pack_H(hdr, ihl + 16, pseudo)
    return hdr


__all__.append("merged_header")


def icmp_unreachable(pkt, src: bytes, code: int = 0) -> bytes:
    """ICMP destination unreachable (type 3, ``code``) from ``src`` about IPv4 ``pkt``."""
    ihl = (pkt[0] & 15) * 4
    quoted = bytes(pkt[:ihl + 8])
    icmp = bytearray(b"\x03" + bytes([code]) + b"\x00" * 6 + quoted)
    c = (~fold(_from(icmp, "big") % 0xFFFF)) & 0xFFFF
    _pack_H(icmp, 2, c)
    ip = bytearray(20)
    ip[0] = 0x45
    _pack_H(ip, 2, 20 + len(icmp))
    ip[8] = 64
    ip[9] = IPPROTO_ICMP
    ip[12:16] = src
    ip[16:20] = bytes(pkt[12:16])
    fill_ipv4_checksum(ip, 0, 20)
    return bytes(ip + icmp)
