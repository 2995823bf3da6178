"""The `fabric` command line: one-line errors, plugin listing, argument checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fabric.cli import _normalise_argv, main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fabric.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_unknown_backend_is_one_line_listing_known_ones() -> None:
    res = run("up", "--backend", "nope", "--network", "10.1.0.0/16", "--iface", "lo",
              "--state-dir", "/tmp/nf-cli-test-state")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "unknown backend 'nope'" in lines[0] and "vxlan" in lines[0] and "hostgw" in lines[0]
    assert "Traceback" not in res.stderr


def test_plugins_json_lists_distributions() -> None:
    res = run("plugins", "--json")
    assert res.returncode == 0
    rows = json.loads(res.stdout)
    by_name = {(r["kind"], r["name"]): r for r in rows}
    assert by_name[("backend", "vxlan")]["distribution"] == "netfabric-vxlan"
    assert by_name[("backend", "hostgw")]["distribution"] == "netfabric-hostgw"


@pytest.mark.parametrize("args, needle", [
    (["up", "--backend", "vxlan"], "--backend and --network go together"),
    (["up", "--backend", "vxlan", "--network", "10.1.0.1/16", "--iface", "lo"], "CIDR"),
    (["up", "--backend", "vxlan", "--network", "10.1.0.0/16", "--backend-opt", "VNI"],
     "KEY=VALUE"),
    (["status", "--state-dir", "/nonexistent-nf"], "agent"),
    (["bench", "--backend", "vxlan", "--congestion", "no-such-cc"], "is not available"),
])
def test_bad_arguments_give_clear_errors(args, needle, capsys) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_argparse_errors_exit_2() -> None:
    res = run("up", "--subnet-len", "abc")
    assert res.returncode == 2 and "invalid int value" in res.stderr


def test_bench_shorthand() -> None:
    assert _normalise_argv(["bench", "--backend", "vxlan"]) == [
        "bench", "throughput", "--backend", "vxlan"]
    assert _normalise_argv(["bench", "mesh", "--peers", "5"]) == ["bench", "mesh", "--peers", "5"]


def test_bench_pin_modes() -> None:
    from fabric.bench.throughput import PIN_MODES
    from fabric.bench.throughput import run as bench_run
    from fabric.errors import ConfigError

    assert PIN_MODES == {"split": (0, 1), "one": (0, 0)}
    with pytest.raises(ConfigError, match="not a pinning mode"):
        bench_run("vxlan", pin="both")
    res = run("bench", "--backend", "vxlan", "--pin", "three")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_agent_commands_take_the_same_target_options() -> None:
    from pathlib import Path

    from fabric.cli import build_parser
    from fabric.targets import agent_socket

    p = build_parser()
    for argv in (["status"], ["down"], ["policy", "list"], ["weave", "status"], ["dns", "list"]):
        a = p.parse_args([*argv, "--state-dir", "/x", "--socket", "/y/s.sock"])
        assert agent_socket(a) == Path("/y/s.sock"), argv
        a = p.parse_args([*argv, "--state-dir", "/x"])
        assert agent_socket(a) == Path("/x/agent.sock"), argv
