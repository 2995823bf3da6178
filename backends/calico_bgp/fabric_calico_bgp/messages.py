"""exabgp's JSON API messages, validated into small frozen types.

exabgp (``encoder json``) writes one JSON object per line to its API process.
Everything that arrives is untrusted: a peer may send odd updates and exabgp
may print text (``done``, ``error``, ``shutdown``). :func:`parse_message`
never raises anything but :class:`MessageError`, so a bad line is logged and
counted by the caller and the agent carries on.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

import attrs

from fabric.errors import BackendError

__all__ = [
    "MessageError",
    "PeerState",
    "RouteUpdate",
    "Notice",
    "Message",
    "parse_message",
]


class MessageError(BackendError):
    """A line from exabgp that is not a valid API message."""


@attrs.frozen
class PeerState:
    """A BGP session changed state (``neighbor-changes``)."""

    peer: IPv4Address
    local: IPv4Address
    state: Literal["up", "down", "connected"]
    reason: str = ""


@attrs.frozen
class RouteUpdate:
    """IPv4 unicast routes a peer announced / withdrew in one UPDATE (or its End-of-RIB)."""

    peer: IPv4Address
    announced: tuple[tuple[IPv4Network, IPv4Address], ...] = ()
    withdrawn: tuple[IPv4Network, ...] = ()
    eor: bool = False
    ignored: int = 0  # NLRI of other families, skipped


@attrs.frozen
class Notice:
    """Anything valid but of no interest (keepalive, open, ack text...)."""

    kind: str
    text: str = ""


Message = PeerState | RouteUpdate | Notice

_TEXT = {"done", "error", "shutdown"}
_MAX_LINE = 4 * 1024 * 1024


def _ipv4(value: Any, what: str) -> IPv4Address:
    if not isinstance(value, str):
        raise MessageError(f"{what} is not a string: {value!r:.80}")
    try:
        return IPv4Address(value)
    except ValueError as exc:
        raise MessageError(f"{what} {value!r:.80} is not an IPv4 address") from exc


def _prefix(entry: Any) -> IPv4Network:
    nlri = entry.get("nlri") if isinstance(entry, dict) else entry
    if not isinstance(nlri, str):
        raise MessageError(f"NLRI entry without a prefix: {entry!r:.80}")
    try:
        return IPv4Network(nlri, strict=True)
    except ValueError as exc:
        raise MessageError(f"NLRI {nlri!r:.80} is not an IPv4 prefix") from exc


def _dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise MessageError(f"{what} is not an object: {value!r:.80}")
    return value


def _neighbor(obj: dict) -> tuple[dict, IPv4Address, IPv4Address]:
    nb = _dict(obj.get("neighbor"), "neighbor")
    addr = _dict(nb.get("address"), "neighbor.address")
    return nb, _ipv4(addr.get("peer"), "peer address"), _ipv4(addr.get("local"), "local address")


def _update(peer: IPv4Address, upd: dict) -> RouteUpdate:
    if "eor" in upd:
        eor = _dict(upd["eor"], "eor")
        return RouteUpdate(peer, eor=True, ignored=int(eor.get("afi") != "ipv4"))
    announced: list[tuple[IPv4Network, IPv4Address]] = []
    withdrawn: list[IPv4Network] = []
    ignored = 0
    for family, by_nexthop in _dict(upd.get("announce", {}), "announce").items():
        if family != "ipv4 unicast":
            ignored += 1
            continue
        for nexthop, entries in _dict(by_nexthop, "announce family").items():
            nh = _ipv4(nexthop, "next hop")
            if not isinstance(entries, list):
                raise MessageError(f"announce list for {nexthop} is not a list")
            announced.extend((_prefix(e), nh) for e in entries)
    for family, entries in _dict(upd.get("withdraw", {}), "withdraw").items():
        if family != "ipv4 unicast":
            ignored += 1
            continue
        if not isinstance(entries, list):
            raise MessageError("withdraw list is not a list")
        withdrawn.extend(_prefix(e) for e in entries)
    return RouteUpdate(peer, tuple(announced), tuple(withdrawn), False, ignored)


def parse_message(line: str | bytes) -> Message:
    """Validate one line from exabgp. Raises :class:`MessageError` on anything malformed."""
    if len(line) > _MAX_LINE:
        raise MessageError(f"message of {len(line)} bytes is too long")
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    text = line.strip()
    if not text:
        return Notice("empty")
    if text in _TEXT:
        return Notice("ack" if text != "shutdown" else "shutdown", text)
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise MessageError(f"not JSON: {text[:80]!r}") from exc
    obj = _dict(obj, "message")
    kind = obj.get("type")
    if kind == "state":
        nb, peer, local = _neighbor(obj)
        state = nb.get("state")
        if state not in ("up", "down", "connected"):
            raise MessageError(f"unknown session state {state!r:.40}")
        reason = nb.get("reason", "")
        return PeerState(peer, local, state, reason if isinstance(reason, str) else str(reason))
    if kind == "update":
        nb, peer, _local = _neighbor(obj)
        if nb.get("direction", "receive") != "receive":
            return Notice("sent-update")
        msg = _dict(nb.get("message"), "neighbor.message")
        if "eor" in msg:  # exabgp puts End-of-RIB beside, not inside, "update"
            return _update(peer, msg)
        return _update(peer, _dict(msg.get("update"), "message.update"))
    if isinstance(kind, str):
        return Notice(kind)
    raise MessageError("message without a type")
