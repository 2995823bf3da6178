"""Peer names: 48-bit MAC-like identifiers (weave style), formatted ``aa:bb:cc:dd:ee:ff``."""

from __future__ import annotations

import os

from fabric.errors import ConfigError

__all__ = ["new_name", "fmt_name", "parse_name", "NAME_MAX"]

NAME_MAX = (1 << 48) - 1


def new_name() -> int:
    """A random, locally administered, unicast MAC-like name."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] | 0x02) & 0xFE
    return int.from_bytes(raw, "big")


def fmt_name(name: int) -> str:
    return ":".join(f"{b:02x}" for b in name.to_bytes(6, "big"))


def parse_name(text: str | int) -> int:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or an int); ConfigError naming the field otherwise."""
    if isinstance(text, int):
        if 0 <= text <= NAME_MAX:
            return text
    else:
        parts = text.strip().split(":")
        if len(parts) == 6 and all(len(p) == 2 for p in parts):
            try:
                return int("".join(parts), 16)
            except ValueError:
                pass
    raise ConfigError(f"peer name {text!r} is invalid",
                      fix="use six hex byte pairs like 02:00:00:00:00:01")
