"""How commands find a running agent: ``--state-dir`` / ``--socket``, or ``--lab NAME`` (the
lab registers its resolver, so the commands never import the lab). Used by `fabric status`,
`down`, `policy`, `weave`, `dns`; the agent's own config takes its default state directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError

__all__ = ["DEFAULT_STATE_DIR", "add_agent_options", "agent_socket", "lab_targets",
           "set_lab_targets"]

DEFAULT_STATE_DIR = Path("/run/netfabric")


def add_agent_options(parser: Any) -> None:
    """``--state-dir`` / ``--socket``: how every command that talks to a running agent finds it
    (`fabric status`, `fabric down`, `fabric policy`, `fabric weave`, `fabric dns`)."""
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"the agent's state directory (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--socket", type=Path,
                        help="the agent's control socket (default STATE_DIR/agent.sock)")


# `--lab NAME`: the agents of a lab, for commands that reach agents (fabric policy ...). The
# lab registers the resolver when its CLI is loaded, so those commands never import the lab.
LabTargets = Callable[[str, list[str]], list[tuple[str, str]]]
_lab_targets: list[LabTargets] = []


def set_lab_targets(resolver: LabTargets) -> None:
    """Called by ``fabric.lab.cli``: ``resolver(lab, hosts)`` -> [(host, agent socket)]."""
    _lab_targets[:] = [resolver]


def lab_targets(lab: str, hosts: list[str]) -> list[tuple[str, str]]:
    if not _lab_targets:
        raise ConfigError("--lab needs netfabric's lab (fabric.lab), which is not loaded",
                          fix="use --socket/--state-dir")
    return _lab_targets[0](lab, hosts)


def agent_socket(args: Any) -> Path:
    """The socket named by :func:`add_agent_options`' options."""
    return Path(args.socket) if args.socket else Path(args.state_dir) / "agent.sock"
