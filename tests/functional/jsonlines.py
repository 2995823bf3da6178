"""A child process spoken to in JSON lines: one request line on stdin, one answer on stdout.

Used for the mesh peer processes (``fabric.ipam.ring_peer``, ``fabric.weave.dns_peer``) and
the backend driver (``backend_driver.py``). Answers are ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": ...}``. Processes are ended by pid: only what the test started.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).parents[2]


class JsonLinesProc:
    def __init__(self, args: list[str], *, ns: str | None = None,
                 stderr: int | IO[str] | None = subprocess.PIPE, timeout: float = 20.0) -> None:
        self.args = args
        self.ns, self.stderr, self.timeout = ns, stderr, timeout
        self.spawn()

    def spawn(self) -> None:
        """Start (again) with ``self.args``; inside namespace ``ns`` when given."""
        prefix = ["ip", "netns", "exec", self.ns] if self.ns else []
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        self.proc = subprocess.Popen(prefix + self.args, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     cwd=REPO, env=env)

    def line(self, timeout: float | None = None) -> str:
        """The next output line; fails when none comes in time or the process is gone."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout or self.timeout)
        if not ready:
            raise TimeoutError(f"no output from {self.args}")
        out = self.proc.stdout.readline()
        if not out:
            err = self.proc.stderr.read()[-2000:] if self.proc.stderr else ""
            raise RuntimeError(f"{self.args} exited: {err}")
        return out

    def request(self, text: str) -> dict[str, Any]:
        """Send one line, return the decoded answer (ok or not)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return json.loads(self.line())

    def cmd(self, text: str) -> Any:
        """Send one line; the answer must be ok: its result."""
        reply = self.request(text)
        assert reply["ok"], f"{text}: {reply}"
        return reply["result"]

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL to our own child, by pid
        self.proc.wait(timeout=10)

    stop = kill9
