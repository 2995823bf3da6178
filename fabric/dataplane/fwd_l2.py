"""Classic L2 forwarding loops: TAP (super-)frames <-> fragmented, optionally sealed UDP messages.

Also the frame delivery both L2 formats share (:func:`deliver`).
"""

from __future__ import annotations

import os

from fabric.dataplane import vnet
from fabric.dataplane.fwd_loop import drop, read_device, receive_datagrams
from fabric.dataplane.l2 import F_VNET, L2Receiver, L2Sender
from fabric.dataplane.l3 import complete_checksum, segment_tcp4, segment_udp4, valid_ipv4

__all__ = ["tx_loop", "rx_loop", "plain_frames", "deliver"]

_BUF = 65536 + vnet.VNET_HDR_LEN
_ETH = 14


def tx_loop(engine) -> None:
    dev, port, table, cfg = engine.device, engine.port, engine.table, engine.config
    use_vnet = dev.offload.vnet_hdr
    stats, drops = engine.tx, engine.tx_drops
    sender = L2Sender(cfg.datagram, engine.key if cfg.encrypt else None, cfg.psk, cfg.cipher)
    seg = cfg.datagram
    flags = F_VNET if use_vnet else 0
    hoff = vnet.VNET_HDR_LEN if use_vnet else 0
    buf = bytearray(_BUF)
    mv = memoryview(buf)

    def handle(n: int) -> None:
        if n < hoff + _ETH:
            drop(drops, "truncated")
            return
        peer = table.lookup(bytes(mv[hoff:hoff + 6]))
        targets = (peer,) if peer is not None else table.peers
        if not targets:
            drop(drops, "no_peer")
            return
        message = mv[:n]
        for target in targets:
            total = sender.build(message, flags, target)
            if not total:
                drop(drops, sender.why)
                continue
            sent = port.send_batch(sender.out, seg, total, target.sockaddr, drops)
            stats["datagrams"] += sent
        stats["packets"] += 1
        stats["bytes"] += n - hoff

    read_device(engine, buf, handle)


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


def deliver(fd: int, use_vnet: bool, message: bytes, hoff: int, drops: dict) -> int:
    """Write one received message (``hoff``: its vnet header length) to the TAP device.

    Returns the number of frames written, 0 when the message was dropped (counted).
    """
    try:
        if use_vnet:
            if hoff:
                os.writev(fd, [message])
            else:
                os.writev(fd, [vnet.NO_VNET, message])
            return 1
        if hoff:  # a super-frame for a device without offloads: cut it here
            parts = plain_frames(message)
            if not parts:
                drop(drops, "bad_super_frame")
                return 0
            for p in parts:
                os.write(fd, p)
            return len(parts)
        os.write(fd, message)
        return 1
    except OSError as exc:  # the kernel refused it (bad virtio header...)
        drop(drops, f"write_{exc.errno}")
        return 0


def rx_loop(engine) -> None:
    dev, table, cfg = engine.device, engine.table, engine.config
    fd, use_vnet = dev.fd, dev.offload.vnet_hdr
    stats, drops = engine.rx, engine.rx_drops
    receiver = L2Receiver(drops, engine.key if cfg.encrypt else None, cfg.psk, cfg.cipher)

    def handle(dgram: memoryview, peer) -> None:
        stats["datagrams"] += 1
        got = receiver.feed(dgram, peer)
        if got is None:
            return
        message, flags = got
        hoff = vnet.VNET_HDR_LEN if flags & F_VNET else 0
        if len(message) < hoff + _ETH:
            drop(drops, "truncated")
            return
        frames = deliver(fd, use_vnet, message, hoff, drops)
        if not frames:
            return
        table.learn(message[hoff + 6:hoff + 12], peer)
        stats["packets"] += frames
        stats["writes"] += 1
        stats["bytes"] += len(message) - hoff

    receive_datagrams(engine, table.by_source, handle)
