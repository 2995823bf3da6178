"""Log formats: plain text, journald (``$JOURNAL_STREAM``) and JSON lines.

Under systemd, stderr goes to the journal, which stamps every line itself and reads a
``<N>`` prefix as the syslog priority: so no timestamp and ``<3>`` for errors there
(``journalctl -p err`` then works). ``--log-format json`` gives one object per line for
log pipelines (time in RFC 3339 UTC, level, logger, message, exception).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

__all__ = ["FORMATS", "configure", "JournalFormatter", "JsonFormatter", "under_journald"]

FORMATS = ("auto", "text", "journal", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}  # syslog: crit, err, warning, info, debug


def under_journald(environ: dict[str, str] | None = None) -> bool:
    """True if stderr is the journal's stream (systemd sets JOURNAL_STREAM=dev:inode)."""
    env = os.environ if environ is None else environ
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        # every line of a multi-line message (tracebacks) carries the priority
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Set up the root logger on stderr; ``auto`` is journal under journald, else text."""
    if fmt not in FORMATS:
        from fabric.errors import ConfigError

        raise ConfigError(f"log format {fmt!r} is unknown", fix=f"use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = "journal" if under_journald() else "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter({"journal": JournalFormatter(), "json": JsonFormatter()}.get(
        fmt, logging.Formatter(_TEXT)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
