"""Receive-side merging of a UDP GRO batch (equal-size datagrams) with numpy.

A GRO batch from one sender is usually one TCP stream cut by the sender's
:func:`~fabric.dataplane.l3.segment_tcp4`; checking all rows at once replaces a
Python loop per datagram. :func:`fabric.dataplane.l3.coalesce_tcp4` remains the
reference and the path without numpy.
"""

from __future__ import annotations

from fabric.dataplane.l3 import IPPROTO_TCP

try:
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

__all__ = ["available", "equal_run"]

_FIN, _SYN, _RST, _PSH, _URG, _CWR = 1, 2, 4, 8, 32, 128
_COLS: dict[tuple[int, int], object] = {}


def available() -> bool:
    return np is not None


def _columns(ihl: int, hlen: int):
    key = (ihl, hlen)
    cols = _COLS.get(key)
    if cols is None:
        skip = {4, 5, 10, 11, ihl + 4, ihl + 5, ihl + 6, ihl + 7, ihl + 13, ihl + 16, ihl + 17}
        cols = _COLS[key] = np.array([c for c in range(hlen) if c not in skip], dtype=np.intp)
    return cols


def equal_run(buf, off: int, k: int, seg: int, limit: int = 65535) -> tuple[int, int, int]:
    """Length of the mergeable TCP run at the start of ``k`` datagrams of ``seg`` bytes.

    ``buf[off:off + k*seg]`` holds the datagrams, each already a valid IPv4
    packet of exactly ``seg`` bytes. Returns (rows, header length, mss); rows 1
    means the first datagram is not mergeable with the next.
    """
    d0 = buf[off:off + seg]
    if d0[9] != IPPROTO_TCP or (d0[6] & 0x3F) or d0[7] or k < 2:
        return 1, 0, 0
    ihl = (d0[0] & 15) * 4
    if seg < ihl + 20:
        return 1, 0, 0
    hlen = ihl + (d0[ihl + 12] >> 4) * 4
    mss = seg - hlen
    f0 = d0[ihl + 13]
    if hlen < ihl + 20 or mss <= 0 or f0 & (_FIN | _SYN | _RST | _URG | _PSH):
        return 1, 0, 0
    k = min(k, (limit - hlen) // mss)
    if k < 2:
        return 1, 0, 0
    rows = np.frombuffer(buf, dtype=np.uint8, count=k * seg, offset=off).reshape(k, seg)
    head = rows[:, :hlen]
    cols = _columns(ihl, hlen)
    ok = (head[:, cols] == head[0, cols]).all(axis=1)
    flags = head[:, ihl + 13]
    ok &= (flags & (0xFF ^ _PSH)) == (f0 & (0xFF ^ _CWR))
    s = head[:, ihl + 4:ihl + 8].astype(np.uint64)
    seqs = (s[:, 0] << 24) | (s[:, 1] << 16) | (s[:, 2] << 8) | s[:, 3]
    ok &= seqs == (np.arange(k, dtype=np.uint64) * mss + int(seqs[0])) & 0xFFFFFFFF
    ok[0] = True
    bad = np.flatnonzero(~ok)
    n = int(bad[0]) if len(bad) else k
    pushed = np.flatnonzero(flags[1:n] & _PSH)
    if len(pushed):
        n = int(pushed[0]) + 2  # the pushed segment ends the run
    return n, hlen, mss
