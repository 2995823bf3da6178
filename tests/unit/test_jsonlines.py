"""fabric.jsonlines: the standalone peers' command protocol."""

from __future__ import annotations

import io
import json

from fabric.errors import ConfigError
from fabric.jsonlines import serve_commands


def test_answers_each_command_until_quit() -> None:
    def run(line: str) -> object:
        word = line.split()[0]
        if word == "bad":
            raise ConfigError("bad command")
        return {"echo": word}

    out = io.StringIO()
    serve_commands(run, lines=io.StringIO("a\n\nbad\nb\nquit\nnever\n"), out=out)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert docs == [{"ok": True, "result": {"echo": "a"}}, {"ok": False, "error": "bad command"},
                    {"ok": True, "result": {"echo": "b"}}]
