"""exabgp reloads: a neighbour added while updates are in flight is still configured.

exabgp (4.2-5.0) drops a SIGUSR1 that arrives while updates wait in its adj-rib-out;
the lab saw it as two nodes that never peered. The Speaker confirms each reload in
exabgp's log and signals again. Two real exabgp speakers peer inside one namespace;
each round announces a route and at once adds a neighbour, which must then connect.
"""

from __future__ import annotations

import socket
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from fabric_calico_bgp.exabgp import BgpNeighbor, Speaker, render_config

from tests.functional.netns_util import add_ns, namespaces, needs_root, sh

pytestmark = [pytest.mark.root, needs_root]
A, B = IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2")


def _config(me: IPv4Address, run: Path, others: list[IPv4Address]) -> str:
    return render_config(router_id=me, local_as=64512, api_socket=run / "api.sock",
                         neighbors=[BgpNeighbor(o, 64512, f"n{o.packed[-1]}") for o in others])


def test_neighbour_added_while_updates_are_pending_gets_connected(tmp_path):
    with namespaces("nfexa-") as tag:
        ns = f"{tag}-n"
        add_ns(ns)
        code = ("import sys; from pathlib import Path; "
                "from tests.functional.test_exabgp_reload import _rounds; "
                "print('rounds', _rounds(Path(sys.argv[1])))")
        res = sh(sys.executable, "-c", code, str(tmp_path), ns=ns, check=False)
        assert res.returncode == 0 and "rounds 6" in res.stdout, res.stdout + res.stderr[-4000:]


def _rounds(tmp: Path) -> int:
    runs = {a: tmp / str(a) for a in (A, B)}
    state: dict[IPv4Address, str] = {}
    speakers = {}
    for me, other in ((A, B), (B, A)):
        runs[me].mkdir()
        speakers[me] = Speaker(
            runs[me], bind=me, on_message=lambda m, me=me: state.__setitem__(
                me, getattr(m, "state", state.get(me, ""))))
        speakers[me].start(_config(me, runs[me], [other]))
    try:
        end = time.monotonic() + 30
        while state.get(A) != "up" and time.monotonic() < end:
            time.sleep(0.1)
        assert state.get(A) == "up", (runs[A] / "exabgp.log").read_text()[-2000:]
        added: list[IPv4Address] = [B]
        done = 0
        for i in range(6):
            new = IPv4Address(f"127.0.0.{10 + i}")
            with socket.socket() as listener:  # the new neighbour: exabgp must connect to it
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((str(new), 179))
                listener.listen(1)
                listener.settimeout(8)
                added.append(new)
                speakers[A].send(f"announce route 10.244.{i}.0/26 next-hop {A}")
                speakers[A].reload(_config(A, runs[A], added))  # right behind the update
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    log = (runs[A] / "exabgp.log").read_text()[-3000:]
                    raise AssertionError(
                        f"round {i}: exabgp never connected to {new}\n{log}") from None
                conn.close()
                done += 1
        return done
    finally:
        for sp in speakers.values():
            sp.stop()
