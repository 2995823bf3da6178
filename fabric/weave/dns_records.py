"""weaveDNS records as gossip data: per-peer entries, versions and tombstones.

An entry is ``(hostname, ip, origin, container_id)`` plus ``version`` and ``tombstone`` (0
while live, else the wall-clock second it was deleted). Only the origin peer creates or
changes its entries, always bumping the version; merge keeps the higher version per key,
and at equal versions a tombstone beats a live entry (two tombstones: the later one), so
merging is commutative, associative and idempotent. Tombstones are kept
:data:`TOMBSTONE_TTL` (weave: 30 minutes, longer than any propagation delay) and then
forgotten; entries of unreachable peers are kept but not answered (``fabric.weave.dns``).

Wire payload (JSON, entries sorted, so equal states encode to equal bytes)::

    {"e": [[hostname, ip, origin, container_id, version, tombstone], ...]}

Gossip is untrusted: :meth:`DnsEntries.decode` refuses malformed payloads, names longer
than 253 characters or with labels over 63, non-IPv4 addresses and too many entries with
the mesh's :class:`~fabric.mesh.wire.FrameError` (the router counts it and carries on).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from ipaddress import AddressValueError, IPv4Address
from typing import Any

import attrs

from fabric.errors import ConfigError
from fabric.mesh.gossip import GossipData
from fabric.mesh.wire import MAX_FRAME, FrameError

__all__ = ["Entry", "DnsEntries", "normalize_name", "check_ip", "check_container_id",
           "TOMBSTONE_TTL",
           "MAX_ENTRIES", "MAX_CONTAINER_ID", "DEFAULT_DOMAIN"]

DEFAULT_DOMAIN = "weave.local."
TOMBSTONE_TTL = 30 * 60.0  # seconds; weave's tombstoneTimeout
MAX_ENTRIES = 65536  # per payload and per store: a cap against a flooding peer
MAX_CONTAINER_ID = 128
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
_MAX_INT = (1 << 63) - 1

Key = tuple[int, str, str, str]  # origin, container id, hostname, ip


@attrs.frozen
class Entry:
    hostname: str  # lowercase FQDN with the trailing dot
    ip: str  # dotted IPv4
    origin: int  # mesh peer name
    container_id: str
    version: int = 1
    tombstone: int = 0  # 0: live; else unix seconds of the deletion

    @property
    def key(self) -> Key:
        return (self.origin, self.container_id, self.hostname, self.ip)

    @property
    def live(self) -> bool:
        return self.tombstone == 0

    def beats(self, other: Entry) -> bool:
        """True if self should replace ``other`` (same key) in a merge."""
        return (self.version, self.tombstone) > (other.version, other.tombstone)

    def wire(self) -> list[Any]:
        return [self.hostname, self.ip, self.origin, self.container_id, self.version,
                self.tombstone]


def normalize_name(name: str, domain: str = DEFAULT_DOMAIN) -> str:
    """Lowercase FQDN; a single label gets ``domain`` appended. ConfigError if invalid."""
    if not isinstance(name, str) or not name.strip(". "):
        raise ConfigError(f"hostname {name!r} is empty", field="hostname",
                          fix="give a name such as web or web.weave.local")
    fq = name.strip().lower().rstrip(".") + "."
    if fq.count(".") == 1:
        fq += domain.lower().strip(".") + "."
    _check_name(fq, lambda why: ConfigError(f"hostname {name!r} is invalid: {why}",
                                            field="hostname",
                                            fix="use letters, digits, '-' and '_' in labels "
                                            "of at most 63 characters, 253 in all"))
    return fq


def _check_name(fq: str, err: Callable[[str], Exception]) -> None:
    if len(fq) > 254:  # 253 characters plus the root dot
        raise err("longer than 253 characters")
    for label in fq[:-1].split("."):
        if len(label) > 63:
            raise err(f"label {label[:20]!r}... longer than 63 characters")
        if not _LABEL.match(label):
            raise err(f"label {label!r} has characters outside [a-z0-9_-] or is empty")


def check_ip(ip: str) -> str:
    """Dotted IPv4 in canonical form; ConfigError otherwise (weaveDNS serves IPv4 only)."""
    try:
        return str(IPv4Address(str(ip).strip()))
    except (AddressValueError, ValueError) as exc:
        raise ConfigError(f"address {ip!r} is not an IPv4 address", field="ip",
                          fix="give a dotted IPv4 address such as 10.32.0.5") from exc


def check_container_id(cid: str) -> str:
    if not isinstance(cid, str) or len(cid) > MAX_CONTAINER_ID or not cid.isprintable():
        raise ConfigError(f"container id {str(cid)[:40]!r}... is invalid", field="container_id",
                          fix=f"use at most {MAX_CONTAINER_ID} printable characters")
    return cid


def _bad(detail: str) -> FrameError:
    return FrameError("bad-dns", detail)


def _decode_entry(item: Any) -> Entry:
    if not isinstance(item, list) or len(item) != 6:
        raise _bad("entry is not a list of 6")
    host, ip, origin, cid, version, tomb = item
    if not (isinstance(host, str) and isinstance(ip, str) and isinstance(cid, str)):
        raise _bad("entry field types")
    if any(type(v) is not int for v in (origin, version, tomb)):
        raise _bad("entry field types")
    if not 0 < origin < (1 << 48) or not 0 < version <= _MAX_INT or not 0 <= tomb <= _MAX_INT:
        raise _bad("entry number out of range")
    if len(cid) > MAX_CONTAINER_ID or not cid.isprintable():
        raise _bad("container id too long or not printable")
    if host != host.lower() or not host.endswith("."):
        raise _bad("hostname not a lowercase FQDN")
    _check_name(host, _bad)
    try:
        canon = str(IPv4Address(ip))
    except (AddressValueError, ValueError) as exc:
        raise _bad("address is not IPv4") from exc
    if canon != ip:
        raise _bad("address not in canonical form")
    return Entry(host, ip, origin, cid, version, tomb)


class DnsEntries(GossipData):
    """A set of entries by key; the gossiped state and its deltas."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries: dict[Key, Entry] = {}
        for e in entries:
            self.put(e)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def put(self, e: Entry) -> bool:
        """Merge one entry; True if it was new or newer."""
        cur = self.entries.get(e.key)
        if cur is None or e.beats(cur):
            self.entries[e.key] = e
            return True
        return False

    # ---- GossipData ---------------------------------------------------------------------
    def encode(self) -> bytes:
        rows = sorted(e.wire() for e in self.entries.values())
        return json.dumps({"e": rows}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> DnsEntries:
        if len(payload) > MAX_FRAME:
            raise _bad("payload too large")
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _bad("not JSON") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("e"), list):
            raise _bad("no entry list")
        if len(doc["e"]) > MAX_ENTRIES:
            raise _bad(f"more than {MAX_ENTRIES} entries")
        return cls(_decode_entry(item) for item in doc["e"])

    def merge(self, other: GossipData) -> DnsEntries:
        assert isinstance(other, DnsEntries)
        for e in other.entries.values():
            self.put(e)
        return self

    def merge_delta(self, other: DnsEntries) -> DnsEntries:
        """Merge ``other``; return only the entries that were new or newer."""
        return DnsEntries(e for e in other.entries.values() if self.put(e))

    # ---- owner-side changes ---------------------------------------------------------------
    def add(self, hostname: str, ip: str, origin: int, container_id: str) -> Entry | None:
        """Add (or revive) an entry of ``origin``; None if it is live already."""
        key = (origin, container_id, hostname, ip)
        cur = self.entries.get(key)
        if cur is not None and cur.live:
            return None
        e = Entry(hostname, ip, origin, container_id, cur.version + 1 if cur else 1)
        self.entries[key] = e
        return e

    def tombstone(self, origin: int, pred: Callable[[Entry], bool], now: int) -> list[Entry]:
        """Tombstone ``origin``'s live entries matching ``pred``; return the new versions."""
        out = []
        for key, e in list(self.entries.items()):
            if e.origin == origin and e.live and pred(e):
                self.entries[key] = attrs.evolve(e, version=e.version + 1, tombstone=max(1, now))
                out.append(self.entries[key])
        return out

    def drop_origin(self, origin: int) -> int:
        gone = [k for k, e in self.entries.items() if e.origin == origin]
        for k in gone:
            del self.entries[k]
        return len(gone)

    def gc(self, now: float, ttl: float = TOMBSTONE_TTL) -> int:
        """Forget tombstones older than ``ttl``; return how many."""
        gone = [k for k, e in self.entries.items() if not e.live and now - e.tombstone > ttl]
        for k in gone:
            del self.entries[k]
        return len(gone)

    def of(self, origin: int) -> list[Entry]:
        return [e for e in self.entries.values() if e.origin == origin]
