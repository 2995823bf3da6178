"""Small helpers shared by test modules."""

from __future__ import annotations

import re
import time
from collections.abc import Callable


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# A counting nftables `forward` chain: shows whether a host's stack forwarded traffic
# (the eBPF fast path forwards past it). Run each command with `nft CMD`.
FORWARD_COUNTER = ("add table ip nffpcount",
                   "add chain ip nffpcount fw { type filter hook forward priority 0 ; }",
                   "add rule ip nffpcount fw counter")
FORWARD_COUNTER_LIST = "list chain ip nffpcount fw"


def counted_packets(nft_output: str) -> int:
    """Packets of the first counter in `nft list` output."""
    return int(re.search(r"counter packets (\d+)", nft_output).group(1))
