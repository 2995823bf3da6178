"""Run one engine in the current network namespace (benchmarks and tests use this).

    python -m fabric.dataplane --mode tun --device nfdp0 --listen 198.19.255.1 \\
        --address 10.250.1.1/16 --peer 10.250.2.0/24=198.19.255.2:8285 --status s.json

``--mode tap --routed --name 0a:00:00:00:00:01 --peer 0a:00:00:00:00:02=IP:PORT[:KEY]`` runs
the weave-routed format with every peer a direct neighbour (full mesh, floods from here to all).

Prints one JSON line ``{"ready": true, ...}`` once forwarding, writes status to
``--status`` every 0.5 s and at exit, and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from fabric.dataplane.crypto import KeyPair
from fabric.dataplane.engine import Engine, EngineConfig
from fabric.dataplane.peers import MacTable, PeerAddr, PeerTable
from fabric.dataplane.routing import WeaveRoutes, name_bytes
from fabric.errors import FabricError
from fabric.fsutil import atomic_write


def _peer(text: str, mode: str) -> tuple[str, PeerAddr]:
    """``[SUBNET= | NAME=]IP:PORT[:KEYHEX]`` -> (subnet or name or "", address)."""
    key = ""
    if mode != "tap" or "=" in text:
        key, _, text = text.partition("=")
    ip, port, *rest = text.split(":")
    return key, PeerAddr(ip, int(port), bytes.fromhex(rest[0]) if rest else b"")


def _routed_table(name: str, peers: list[tuple[str, PeerAddr]]) -> WeaveRoutes:
    table = WeaveRoutes(name)
    names = {name_bytes(n): p for n, p in peers}
    table.set_neighbours(names)
    table.set_unicast({n: n for n in names})
    table.set_flood({table.local: list(names)})
    return table


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the receive process ends when the send process does (even on -9)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def configure_device(name: str, address: str | None, mtu: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, mtu=mtu, state="up")
        if address:
            a = IPv4Interface(address)
            ipr.addr("replace", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fabric.dataplane")
    p.add_argument("--mode", choices=["tun", "tap"], required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--port", type=int, default=8285)
    p.add_argument("--address", help="address/prefix for the device")
    p.add_argument("--peer", action="append", default=[],
                   help="tun: SUBNET=IP:PORT; tap: IP:PORT[:PUBKEYHEX]; routed: NAME=IP:PORT[:KEY]")
    p.add_argument("--routed", action="store_true", help="tap: the weave-routed format")
    p.add_argument("--name", default="", help="routed: this node's peer name (6 bytes hex)")
    p.add_argument("--no-offload", action="store_true")
    p.add_argument("--partial-checksum", action="store_true")
    p.add_argument("--encrypt", action="store_true")
    p.add_argument("--cipher", default="aesgcm")
    p.add_argument("--key-file", type=Path)
    p.add_argument("--psk", default="")
    p.add_argument("--underlay-mtu", type=int, default=1500)
    p.add_argument("--icmp-source", default="")
    p.add_argument("--status", type=Path)
    p.add_argument("--split", action="store_true",
                   help="one process per direction (fork) instead of one thread per direction")
    args = p.parse_args(argv)
    try:
        cfg = EngineConfig(mode=args.mode, device=args.device, listen_ip=args.listen,
                           port=args.port, underlay_mtu=args.underlay_mtu,
                           offload=not args.no_offload, encrypt=args.encrypt, cipher=args.cipher,
                           psk=args.psk.encode(), full_checksum=not args.partial_checksum,
                           icmp_source=args.icmp_source, routed=args.routed)
        key = KeyPair.load_or_create(args.key_file) if args.key_file else None
        if cfg.encrypt and key is None:
            key = KeyPair.generate()
        peers = [_peer(t, args.mode) for t in args.peer]
        if args.mode == "tun":
            table: PeerTable | MacTable | WeaveRoutes = PeerTable()
            for subnet, peer in peers:
                table.set(IPv4Network(subnet), peer)
        elif args.routed:
            table = _routed_table(args.name, peers)
        else:
            table = MacTable([peer for _s, peer in peers])
        engine = Engine(cfg, table, key)
        engine.open()
        configure_device(args.device, args.address, cfg.mtu)
    except (FabricError, ValueError, OSError) as exc:
        print(json.dumps({"ready": False, "error": str(exc)}), flush=True)
        return 1
    child = 0
    status_file = args.status
    if args.split:  # no threads exist yet, so forking is safe
        sys.stdout.flush()
        child = os.fork()
        if child == 0:
            _die_with_parent()
            engine.start(("rx",))
            status_file = args.status.with_name(args.status.stem + "-rx.json") \
                if args.status else None
        else:
            engine.start(("tx",))
    else:
        engine.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def dump() -> None:
        if status_file:
            # rewritten every 0.5 s: atomic for readers, no fsync
            atomic_write(status_file, json.dumps(engine.status()), durable=False)

    if child >= 0 and (child or not args.split):
        print(json.dumps({"ready": True, "pid": os.getpid(), "helper_pid": child,
                          "public_key": key.public.hex() if key else "",
                          "status": engine.status()}), flush=True)
    while not done.wait(0.5):
        dump()
        if not engine.running:
            break
    if child:
        os.kill(child, signal.SIGTERM)
        os.waitpid(child, 0)
    engine.stop()
    dump()
    if args.split and not child:
        os._exit(0 if not engine.errors else 1)
    return 0 if not engine.errors else 1


if __name__ == "__main__":
    sys.exit(main())
