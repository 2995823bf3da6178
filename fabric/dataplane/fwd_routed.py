"""Weave-routed L2 forwarding: TAP frames to peers by origin/dst name, relay, flood, heartbeats.

Three threads: device -> UDP (:func:`tx_loop`), UDP -> device and relay (:func:`rx_loop`),
and a timer (:func:`timer_loop`) sending heartbeats and expiring MACs. Each has its own
:class:`L2Sender` (a sender, and its sealing sessions, belong to one thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fabric.dataplane import vnet
from fabric.dataplane.fwd_l2 import deliver
from fabric.dataplane.fwd_loop import drop, read_device, receive_datagrams
from fabric.dataplane.l2 import F_CONTROL, F_VNET, FLOOD, L2Receiver, L2Sender
from fabric.dataplane.peers import PeerAddr

__all__ = ["tx_loop", "rx_loop", "timer_loop", "is_super_frame", "RoutedRx"]

_BUF = 65536 + vnet.VNET_HDR_LEN
_ETH = 14


def is_super_frame(message, hoff: int) -> bool:
    """The message carries a GSO super-frame (the kernel segments it), not one plain frame."""
    return bool(hoff) and message[1] & ~vnet.GSO_ECN != vnet.GSO_NONE


def _sender(engine) -> L2Sender:
    cfg = engine.config
    return L2Sender(cfg.datagram, engine.key if cfg.encrypt else None, cfg.psk, cfg.cipher,
                    routed=True)


def tx_loop(engine) -> None:
    """Frames from the local bridge: to the owner's next hop, or flooded with origin = local."""
    dev, port, table, cfg = engine.device, engine.port, engine.table, engine.config
    use_vnet = dev.offload.vnet_hdr
    stats, drops = engine.tx, engine.tx_drops
    sender = _sender(engine)
    seg, local, ttl, max_frame = cfg.datagram, table.local, cfg.hop_limit, cfg.max_frame
    flags = F_VNET if use_vnet else 0
    hoff = vnet.VNET_HDR_LEN if use_vnet else 0
    buf = bytearray(_BUF)
    mv = memoryview(buf)
    out = sender.out

    def handle(n: int) -> None:
        if n < hoff + _ETH:
            drop(drops, "truncated")
            return
        if n - hoff > max_frame and not is_super_frame(buf, hoff):
            drop(drops, "too_big")  # never truncated: the sender's MTU is wrong
            return
        table.learn_local(bytes(mv[hoff + 6:hoff + 12]))
        dst_mac = bytes(mv[hoff:hoff + 6])
        targets = table.tx_targets(dst_mac)
        if isinstance(targets, str):
            drop(drops, targets)
            return
        message = mv[:n]
        for addr, dst in targets:
            total = sender.build(message, flags, addr, (ttl, local, dst))
            if not total:
                drop(drops, sender.why)  # that peer only: the others still get their copy
                continue
            stats["datagrams"] += port.send_batch(out, seg, total, addr.sockaddr, drops)
        stats["packets"] += 1
        stats["bytes"] += n - hoff
        if dst_mac[0] & 1 or len(targets) > 1 or targets[0][1] == FLOOD:
            stats["flooded"] = stats.get("flooded", 0) + 1

    read_device(engine, buf, handle)


class RoutedRx:
    """The receive path's decisions (rx thread): decode, heartbeat, deliver and learn, relay.

    ``write(message, vnet header length) -> frames written`` is the TAP device and
    ``send(buffer, bytes, peer)`` the UDP socket; kept apart from the loop so hostile input
    can be fuzzed through the whole path.
    """

    def __init__(self, engine, write: Callable[[bytes, int], int],
                 send: Callable[[bytearray, int, PeerAddr], object]) -> None:
        cfg = engine.config
        self.table, self.health = engine.table, engine.health
        self.stats, self.drops = engine.rx, engine.rx_drops
        self.receiver = L2Receiver(self.drops, engine.key if cfg.encrypt else None, cfg.psk,
                                   cfg.cipher, routed=True)
        self.relay = _sender(engine)
        self.max_frame = cfg.max_frame
        self.write, self.send = write, send

    def datagram(self, dgram, neighbour: tuple[bytes, PeerAddr]) -> None:
        """One datagram from ``neighbour`` = (name, address)."""
        self.stats["datagrams"] += 1
        got = self.receiver.feed(dgram, neighbour[1])
        if got is not None:
            self.message(got[0], got[1], neighbour[0], self.receiver.route)

    def message(self, body: bytes, flags: int, sender: bytes, route: tuple) -> None:
        ttl, origin, dst = route
        table, stats, drops = self.table, self.stats, self.drops
        if flags & F_CONTROL:  # a heartbeat: one hop, from the neighbour itself, to us
            if origin != sender or dst != table.local:
                drop(drops, "bad_heartbeat")
                return
            why = self.health.received(sender, body)
            if why == "unknown_peer":  # a neighbour newer than the timer's last look
                self.health.set_peers(table.neighbours)
                why = self.health.received(sender, body)
            if why:
                drop(drops, why)
            else:
                stats["heartbeats"] = stats.get("heartbeats", 0) + 1
            return
        here, forward, why = table.rx_actions(sender, origin, dst, ttl)
        if why:
            drop(drops, why)
            if not here and not forward:
                return
        hoff = vnet.VNET_HDR_LEN if flags & F_VNET else 0
        if len(body) < hoff + _ETH:
            drop(drops, "truncated")
            return
        if len(body) - hoff > self.max_frame and not is_super_frame(body, hoff):
            drop(drops, "too_big")
            return
        if here:
            if not table.learn(body[hoff + 6:hoff + 12], origin):
                drop(drops, "mac_conflict")  # one of our MACs behind another peer: not taken
                return
            frames = self.write(body, hoff)
            if frames:
                stats["packets"] += frames
                stats["writes"] += 1
                stats["bytes"] += len(body) - hoff
        relay = self.relay
        for addr, to in forward:
            total = relay.build(body, flags, addr, (ttl - 1, origin, to))
            if total:
                self.send(relay.out, total, addr)
                stats["relayed"] = stats.get("relayed", 0) + 1
            else:
                drop(drops, relay.why)


def rx_loop(engine) -> None:
    """Messages from neighbours: deliver (and learn), forward floods, relay for others."""
    dev, port, cfg = engine.device, engine.port, engine.config
    fd, use_vnet = dev.fd, dev.offload.vnet_hdr
    drops, seg_out = engine.rx_drops, cfg.datagram
    path = RoutedRx(
        engine, lambda body, hoff: deliver(fd, use_vnet, body, hoff, drops),
        lambda buf, total, addr: port.send_batch(buf, seg_out, total, addr.sockaddr, drops))
    receive_datagrams(engine, engine.table.by_source, path.datagram)


def timer_loop(engine) -> None:
    """Heartbeats to every neighbour each interval, path states, MAC expiry."""
    table, port, health, cfg = engine.table, engine.port, engine.health, engine.config
    sender = _sender(engine)
    stats, drops = engine.tx, engine.tx_drops
    step = min(cfg.heartbeat_interval / 4, 0.25)
    last_expiry = time.monotonic()
    while engine.sleep(step):
        now = time.monotonic()
        neighbours = table.neighbours
        health.set_peers(neighbours, now)
        for name, payload in health.outgoing(now):
            addr = neighbours.get(name)
            if addr is None:
                continue
            total = sender.build(payload, F_CONTROL, addr, (1, table.local, name))
            if not total:
                drop(drops, sender.why)
            elif port.send_batch(sender.out, cfg.datagram, total, addr.sockaddr, drops):
                stats["heartbeats"] = stats.get("heartbeats", 0) + 1
        health.tick(now)
        if now - last_expiry >= 1.0:
            last_expiry = now
            table.expire(now)
