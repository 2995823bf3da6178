"""``fabric bench mesh`` on small sizes: JSON shape, growth, partitions, bad input."""

from __future__ import annotations

import json

import pytest

from fabric.bench.mesh import simulate
from fabric.cli import build_parser
from fabric.errors import ConfigError


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    args = build_parser().parse_args(["bench", "mesh", *argv])
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_sizes_json(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_cli(capsys, "--compare", "20,60", "--table")
    small, big = doc["runs"]
    for r in (small, big):
        assert r["converged"] and r["convergence_s"] <= 2.0
        assert r["duplicates"] == 0 and r["rings_agree"] and r["allocations_in_own_ranges"]
        assert r["msgs_per_peer_per_round"] <= r["fanout"] + 1
    assert doc["growth"][1]["peers"] == 60


def test_partition_and_loss_heal() -> None:
    r = simulate(40, partition=(0.2, 1.0), loss=0.02, gossip_interval=1.0)
    assert r["converged"] and r["convergence_s"] >= 1.0
    assert r["duplicates"] == 0 and r["rings_agree"]


def test_consensus_init_in_bench() -> None:
    r = simulate(30, init="consensus")
    assert r["ring_ready"] and r["duplicates"] == 0 and r["rings_agree"]


@pytest.mark.parametrize("argv", [["--partition", "x"], ["--partition", "2,1"],
                                  ["--peers", "1"], ["--loss", "1.5"]])
def test_bad_arguments(argv: list[str]) -> None:
    args = build_parser().parse_args(["bench", "mesh", *argv])
    with pytest.raises(ConfigError):
        args.func(args)
