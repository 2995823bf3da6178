"""Small helpers shared by test modules."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from fabric_testplugins.etcd import EtcdServer, etcd_binary


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def private_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A private, real etcd on 127.0.0.1 (free ports, own data directory), stopped by pid
    afterwards; skips the test when etcd is not installed. The body of the etcd fixtures."""
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


# A counting nftables `forward` chain: shows whether a host's stack forwarded traffic
# (the eBPF fast path forwards past it). Run each command with `nft CMD`.
FORWARD_COUNTER = ("add table ip nffpcount",
                   "add chain ip nffpcount fw { type filter hook forward priority 0 ; }",
                   "add rule ip nffpcount fw counter")
FORWARD_COUNTER_LIST = "list chain ip nffpcount fw"


def counted_packets(nft_output: str) -> int:
    """Packets of the first counter in `nft list` output."""
    return int(re.search(r"counter packets (\d+)", nft_output).group(1))
