"""The loop skeleton every forwarding thread shares: block, read, hand over, count, stop.

The formats (flannel L3, classic L2, routed L2) differ only in what they do with one device
read or one UDP batch; waiting, stopping and error accounting live here once.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["read_device", "receive_port", "receive_datagrams", "drop"]


def drop(drops: dict, why: str, n: int = 1) -> None:
    drops[why] = drops.get(why, 0) + n


def read_device(engine, buf: bytearray, handle: Callable[[int], None]) -> None:
    """Read the TUN/TAP device into ``buf`` until the engine stops; ``handle(n)`` per read."""
    fd = engine.device.fd
    stats = engine.tx
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
            raise  # the device is gone: the thread ends and status shows why
        stats["reads"] += 1
        handle(n)


def receive_port(engine, buf: bytearray, handle: Callable[[int, int, tuple], None]) -> None:
    """Receive UDP (GRO) batches into ``buf``; ``handle(bytes, segment size, sender)`` each.

    A write the kernel refuses inside ``handle`` (OSError) is counted as ``write_<errno>``.
    """
    port = engine.port
    fileno = port.sock.fileno()
    stats, drops = engine.rx, engine.rx_drops
    while True:
        try:
            n, seg, addr = port.recv_batch(buf)
        except BlockingIOError:
            if not engine.wait_readable(fileno):
                return
            continue
        except OSError:
            if engine.stopping():
                return
            drop(drops, "recv_error")
            continue
        stats["batches"] += 1
        if n == 0:
            drop(drops, "empty")
            continue
        try:
            handle(n, seg or n, addr)
        except OSError as exc:
            if engine.stopping():
                return
            drop(drops, f"write_{exc.errno}")


def receive_datagrams(engine, lookup: Callable[[str], object | None],
                      handle: Callable[[memoryview, object], None]) -> None:
    """:func:`receive_port` for the L2 formats: drop batches from addresses ``lookup`` does
    not know (``unknown_source``), then ``handle(datagram, peer)`` for each datagram."""
    buf = bytearray(65536 * 2)
    mv = memoryview(buf)
    drops = engine.rx_drops

    def batch(n: int, seg: int, addr: tuple) -> None:
        peer = lookup(addr[0])
        if peer is None:
            drop(drops, "unknown_source")
            return
        for off in range(0, n, seg):
            handle(mv[off:min(off + seg, n)], peer)

    receive_port(engine, buf, batch)
