"""L2 forwarding loops: TAP (super-)frames <-> fragmented, optionally sealed UDP messages."""

from __future__ import annotations

import os

from fabric.dataplane import vnet
from fabric.dataplane.l2 import F_VNET, L2Receiver, L2Sender
from fabric.dataplane.l3 import complete_checksum, segment_tcp4, segment_udp4, valid_ipv4

__all__ = ["tx_loop", "rx_loop", "plain_frames"]

_BUF = 65536 + vnet.VNET_HDR_LEN
_ETH = 14


def _drop(drops: dict, why: str, n: int = 1) -> None:
    drops[why] = drops.get(why, 0) + n


def tx_loop(engine) -> None:
    dev, port, table, cfg = engine.device, engine.port, engine.table, engine.config
    fd, use_vnet = dev.fd, dev.offload.vnet_hdr
    stats, drops = engine.tx, engine.tx_drops
    sender = L2Sender(cfg.datagram, engine.key if cfg.encrypt else None, cfg.psk, cfg.cipher)
    seg = cfg.datagram
    flags = F_VNET if use_vnet else 0
    hoff = vnet.VNET_HDR_LEN if use_vnet else 0
    buf = bytearray(_BUF)
    mv = memoryview(buf)
    readv = os.readv
    while True:
        try:
            n = readv(fd, [buf])
        except BlockingIOError:
            if not engine.wait_readable(fd):
                return
            continue
        except OSError:
            if engine.stopping():
                return
            raise
        stats["reads"] += 1
        if n < hoff + _ETH:
            _drop(drops, "truncated")
            continue
        peer = table.lookup(bytes(mv[hoff:hoff + 6]))
        targets = (peer,) if peer is not None else table.peers
        if not targets:
            _drop(drops, "no_peer")
            continue
        message = mv[:n]
        for target in targets:
            total = sender.build(message, flags, target)
            if not total:
                _drop(drops, "too_big")
                break
            sent = port.send_batch(sender.out, seg, total, target.sockaddr, drops)
            stats["datagrams"] += sent
        stats["packets"] += 1
        stats["bytes"] += n - hoff


def plain_frames(message: bytes) -> list[bytes]:
    """A vnet-headed (super-)frame as ordinary frames, for a device without offloads."""
    flags, gso, _hl, gso_size, cstart, coff = vnet.unpack(message)
    frame = bytearray(message[vnet.VNET_HDR_LEN:])
    gso &= ~vnet.GSO_ECN
    if gso == vnet.GSO_NONE:
        if flags & vnet.F_NEEDS_CSUM and (
                cstart < _ETH + 20
                or not complete_checksum(frame, _ETH, len(frame), cstart - _ETH, coff)):
            return []
        return [bytes(frame)]
    ip = memoryview(frame)[_ETH:]
    if not valid_ipv4(ip, len(ip)):
        return []
    out = bytearray(70000)
    if gso == vnet.GSO_TCPV4:
        count, full, total = segment_tcp4(ip, gso_size, out)
    elif gso == vnet.GSO_UDP_L4:
        count, full, total = segment_udp4(ip, gso_size, out)
    else:
        return []
    eth = bytes(frame[:_ETH])
    return [eth + bytes(out[o:min(o + full, total)]) for o in range(0, total, full)][:count]


def rx_loop(engine) -> None:
    dev, port, table, cfg = engine.device, engine.port, engine.table, engine.config
    fd, use_vnet = dev.fd, dev.offload.vnet_hdr
    stats, drops = engine.rx, engine.rx_drops
    receiver = L2Receiver(drops, engine.key if cfg.encrypt else None, cfg.psk, cfg.cipher)
    buf = bytearray(65536 * 2)
    mv = memoryview(buf)
    sock = port.sock
    writev = os.writev
    while True:
        try:
            n, seg, addr = port.recv_batch(buf)
        except BlockingIOError:
            if not engine.wait_readable(sock.fileno()):
                return
            continue
        except OSError:
            if engine.stopping():
                return
            _drop(drops, "recv_error")
            continue
        stats["batches"] += 1
        peer = table.by_source(addr[0])
        if peer is None:
            _drop(drops, "unknown_source")
            continue
        seg = seg or n
        for off in range(0, n, seg):
            stats["datagrams"] += 1
            got = receiver.feed(mv[off:min(off + seg, n)], peer)
            if got is None:
                continue
            message, flags = got
            hoff = vnet.VNET_HDR_LEN if flags & F_VNET else 0
            if len(message) < hoff + _ETH:
                _drop(drops, "truncated")
                continue
            try:
                if use_vnet:
                    if hoff:
                        writev(fd, [message])
                    else:
                        writev(fd, [vnet.NO_VNET, message])
                    frames = 1
                elif hoff:
                    parts = plain_frames(message)
                    if not parts:
                        _drop(drops, "bad_super_frame")
                        continue
                    for p in parts:
                        os.write(fd, p)
                    frames = len(parts)
                else:
                    os.write(fd, message)
                    frames = 1
            except OSError as exc:  # the kernel refused it (bad virtio header...)
                _drop(drops, f"write_{exc.errno}")
                continue
            table.learn(message[hoff + 6:hoff + 12], peer)
            stats["packets"] += frames
            stats["writes"] += 1
            stats["bytes"] += len(message) - hoff
