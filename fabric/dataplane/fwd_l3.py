"""L3 forwarding loops (flannel udp): TUN -> one IPv4 packet per UDP datagram, and back."""

from __future__ import annotations

import os
import socket
import time
from ipaddress import IPv4Address

from fabric.dataplane import gro, vnet
from fabric.dataplane.csum import fill_ipv4_checksum
from fabric.dataplane.fwd_loop import drop, read_device, receive_port
from fabric.dataplane.l3 import (
    coalesce_tcp4,
    complete_checksum,
    icmp_unreachable,
    merged_header,
    segment_tcp4,
    segment_udp4,
    valid_ipv4,
)

__all__ = ["tx_loop", "rx_loop"]

_BUF = 65536 + vnet.VNET_HDR_LEN
_ICMP_PER_SEC = 50
_NUMPY_MIN = 8  # smaller GRO batches: the per-datagram Python path is cheaper


def tx_loop(engine) -> None:
    """Read the TUN device, route by inner destination, send to the peer's UDP port."""
    dev, port, table, cfg = engine.device, engine.port, engine.table, engine.config
    use_vnet = dev.offload.vnet_hdr
    stats, drops = engine.tx, engine.tx_drops
    buf = bytearray(_BUF)
    mv = memoryview(buf)
    out = bytearray(70000)
    hoff = vnet.VNET_HDR_LEN if use_vnet else 0
    full_csum = cfg.full_checksum
    icmp = _IcmpReplies(cfg.icmp_source, stats, drops)

    def handle(n: int) -> None:
        if n <= hoff:
            drop(drops, "truncated")
            return
        pkt = mv[hoff:n]
        length = n - hoff
        ihl = valid_ipv4(pkt, length)
        if not ihl:
            drop(drops, "not_ipv4")
            return
        peer = table.lookup(bytes(pkt[16:20]))
        if peer is None:
            drop(drops, "no_route")
            icmp.unreachable(pkt, ihl)
            return
        ttl = pkt[8]
        if ttl <= 1:
            drop(drops, "ttl_expired")
            return
        pkt[8] = ttl - 1
        if use_vnet:
            flags, gso, _hl, gso_size, cstart, coff = vnet.unpack(buf)
        else:
            flags = gso = 0
        gso &= ~vnet.GSO_ECN
        if gso == vnet.GSO_NONE:
            if flags & vnet.F_NEEDS_CSUM and not complete_checksum(pkt, 0, length, cstart, coff):
                drop(drops, "bad_csum_offsets")
                return
            fill_ipv4_checksum(pkt, 0, ihl)
            if port.send_batch(pkt, length, length, peer.sockaddr, drops):
                stats["packets"] += 1
                stats["datagrams"] += 1
                stats["bytes"] += length
            return
        if gso == vnet.GSO_TCPV4:
            count, full, total = segment_tcp4(pkt, gso_size, out, full_csum)
        elif gso == vnet.GSO_UDP_L4:
            count, full, total = segment_udp4(pkt, gso_size, out)
        else:
            drop(drops, "unsupported_gso")
            return
        if not count:
            drop(drops, "bad_super_packet")
            return
        sent = port.send_batch(out, full, total, peer.sockaddr, drops)
        stats["packets"] += sent
        stats["datagrams"] += sent
        stats["bytes"] += total

    read_device(engine, buf, handle)


class _IcmpReplies:
    """ICMP net-unreachable for packets without a route, rate-limited (tx thread only)."""

    def __init__(self, source: str, stats: dict, drops: dict) -> None:
        self.source = IPv4Address(source).packed if source else b""
        self.stats, self.drops = stats, drops
        self.tokens, self.time = float(_ICMP_PER_SEC), time.monotonic()
        self.raw: socket.socket | None = None

    def unreachable(self, pkt, ihl: int) -> None:
        if not self.source:
            return
        now = time.monotonic()
        self.tokens = min(_ICMP_PER_SEC, self.tokens + (now - self.time) * _ICMP_PER_SEC)
        self.time = now
        if self.tokens < 1 or (pkt[9] == 1 and pkt[ihl] != 8):  # never about ICMP errors
            return
        self.tokens -= 1
        reply = icmp_unreachable(pkt, self.source)
        try:  # sent by this node (a reply from a local address written into the
            # TUN device would be dropped as a martian)
            if self.raw is None:
                self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.raw.sendto(reply, (socket.inet_ntoa(reply[16:20]), 0))
            self.stats["icmp_unreachable"] = self.stats.get("icmp_unreachable", 0) + 1
        except OSError:
            drop(self.drops, "icmp_send")


def rx_loop(engine) -> None:
    """Receive datagrams (GRO batches), check them, merge TCP runs, write to the TUN device."""
    dev, table, cfg = engine.device, engine.table, engine.config
    fd, use_vnet = dev.fd, dev.offload.vnet_hdr
    stats, drops = engine.rx, engine.rx_drops
    buf = bytearray(65536 * 2)
    mv = memoryview(buf)
    strict = cfg.strict_source
    writev = os.writev
    no_vnet = vnet.NO_VNET
    fast = use_vnet and gro.available() and cfg.offload

    def handle(n: int, seg: int, addr: tuple) -> None:
        if strict and table.by_source(addr[0]) is None:
            drop(drops, "unknown_source")
            return
        if fast and n // seg >= _NUMPY_MIN:
            _write_batch(fd, buf, mv, n, seg, stats, drops)
            return
        good = []
        for off in range(0, n, seg):
            d = mv[off:min(off + seg, n)]
            if not valid_ipv4(d, len(d)):
                drop(drops, "malformed")
                continue
            good.append(d)
        stats["datagrams"] += len(good)
        if not use_vnet:
            for d in good:
                os.write(fd, d)
                stats["packets"] += 1
                stats["bytes"] += len(d)
                stats["writes"] += 1
            return
        i, end = 0, len(good)
        while i < end:
            cnt, hlen, mss = coalesce_tcp4(good, i) if end - i > 1 else (1, 0, 0)
            if cnt == 1:
                d = good[i]
                writev(fd, [no_vnet, d])
                stats["bytes"] += len(d)
            else:
                run = good[i:i + cnt]
                stats["bytes"] += _write_merged(fd, run[0], run, hlen, mss)
            stats["packets"] += cnt
            stats["writes"] += 1
            i += cnt

    receive_port(engine, buf, handle)


def _write_merged(fd: int, d0, run, hlen: int, mss: int) -> int:
    """Write datagrams ``run`` (one TCP stream run) as one GSO super-packet; returns bytes."""
    ihl = (d0[0] & 15) * 4
    size = hlen + sum(len(d) - hlen for d in run)
    hdr = merged_header(d0, size, hlen, run[-1][ihl + 13])
    vh = vnet.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, hlen, mss, ihl, 16)
    os.writev(fd, [vh, hdr, *[d[hlen:] for d in run]])
    return size


def _write_batch(fd: int, buf, mv, n: int, seg: int, stats: dict, drops: dict) -> None:
    """Fast path: equal datagrams checked at once, TCP runs merged, the rest written alone.

    Only the first datagram of a run is parsed here; :func:`gro.equal_run`
    compares the others' headers (version, length included) with it.
    """
    k = n // seg
    i = 0
    while i < k:
        off = i * seg
        d = mv[off:off + seg]
        if not valid_ipv4(d, seg):
            drop(drops, "malformed")
            i += 1
            continue
        cnt, hlen, mss = gro.equal_run(buf, off, k - i, seg)
        if cnt == 1:
            os.writev(fd, [vnet.NO_VNET, d])
            stats["bytes"] += seg
        else:
            run = [mv[o:o + seg] for o in range(off, off + cnt * seg, seg)]
            stats["bytes"] += _write_merged(fd, run[0], run, hlen, mss)
        stats["packets"] += cnt
        stats["writes"] += 1
        i += cnt
    stats["datagrams"] += k
    if n > k * seg:  # the shorter last datagram of the batch
        d = mv[k * seg:n]
        stats["datagrams"] += 1
        if valid_ipv4(d, len(d)):
            os.writev(fd, [vnet.NO_VNET, d])
            stats["packets"] += 1
            stats["bytes"] += len(d)
            stats["writes"] += 1
        else:
            drop(drops, "malformed")
