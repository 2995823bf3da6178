"""The stdin/stdout protocol of the standalone peers (``python -m fabric.weave.dns_peer``,
``python -m fabric.ipam.ring_peer``) that tests and experiments drive: one command per line
in, one JSON line per command out."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from fabric.errors import FabricError

__all__ = ["reply", "serve_commands"]


def reply(doc: dict[str, Any], out: TextIO | None = None) -> None:
    """Write ``doc`` as one JSON line and flush (the driver waits for it)."""
    print(json.dumps(doc), file=out or sys.stdout, flush=True)


def serve_commands(run: Callable[[str], Any], *, lines: TextIO | None = None,
                   out: TextIO | None = None) -> None:
    """Answer each line with ``{"ok": true, "result": run(line)}``, or ``{"ok": false,
    "error": ...}`` when it raises a FabricError, ValueError or IndexError (a bad command),
    until ``quit`` or the end of input. Blank lines are skipped."""
    for line in lines or sys.stdin:
        if line.strip() == "quit":
            break
        if not line.strip():
            continue
        try:
            doc = {"ok": True, "result": run(line)}
        except (FabricError, ValueError, IndexError) as exc:
            doc = {"ok": False, "error": str(exc)}
        reply(doc, out)
