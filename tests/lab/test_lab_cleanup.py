"""`down` leaves `ip netns list` as before, also after a crash (object abandoned,
`fabric lab down --name` from another process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabric.lab import Lab, Topology
from fabric.lab.procs import ProcRecord, is_alive
from fabric.lab.topology import STATE_ROOT
from tests.lab.lab_util import all_namespaces, lab_namespaces, needs_root, stack_missing

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]

MODES = ["underlay", "vxlan"]  # underlay: switch, router, hosts, etcd, no agents


def _skip_unless_runnable(mode: str) -> None:
    if mode != "underlay" and (why := stack_missing(mode)):
        pytest.skip(why)


@pytest.mark.parametrize("mode", MODES)
def test_down_leaves_netns_list_as_before(lab_name: str, mode: str) -> None:
    _skip_unless_runnable(mode)
    before = all_namespaces(lab_name)
    topo = Topology(lab_name, "vxlan", hosts=3, pods_per_host=1, segments=2)
    with Lab(topo, agents=mode != "underlay") as lab:
        assert len(lab_namespaces(lab_name)) == (8 if mode != "underlay" else 5)
        procs = list(lab.procs.values())
        assert procs and all(is_alive(r) for r in procs)
    assert lab_namespaces(lab_name) == []
    assert all_namespaces(lab_name) == before
    assert not any(is_alive(r) for r in procs)
    assert not (STATE_ROOT / lab_name).exists()


_CRASHER = """
import json, os, sys
from fabric.lab import Lab, Topology
lab = Lab(Topology(sys.argv[1], "vxlan", hosts=2, pods_per_host=1, segments=2),
          agents=sys.argv[2] != "underlay").up()
print(json.dumps([r.to_json() for r in lab.procs.values()]), flush=True)
os._exit(3)  # crash: no down(), no finally, no atexit
"""


@pytest.mark.parametrize("mode", MODES)
def test_cli_down_after_crash(lab_name: str, mode: str) -> None:
    _skip_unless_runnable(mode)
    before = all_namespaces(lab_name)
    crashed = subprocess.run([sys.executable, "-c", textwrap.dedent(_CRASHER), lab_name, mode],
                             capture_output=True, text=True, timeout=180,
                             cwd=Path(__file__).resolve().parents[2])
    assert crashed.returncode == 3, crashed.stderr
    procs = [ProcRecord.from_json(r) for r in json.loads(crashed.stdout.splitlines()[-1])]
    assert procs and all(is_alive(r) for r in procs)  # the crash left them running
    assert lab_namespaces(lab_name)
    listed = subprocess.run(["fabric", "lab", "list"], capture_output=True, text=True)
    assert lab_name in listed.stdout.split()

    down = subprocess.run(["fabric", "lab", "down", "--name", lab_name],
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert f"stopped {len(procs)} process(es)" in down.stdout
    assert lab_namespaces(lab_name) == []
    assert all_namespaces(lab_name) == before
    assert not any(is_alive(r) for r in procs)
    assert not (STATE_ROOT / lab_name).exists()
    again = subprocess.run(["fabric", "lab", "down", "--name", lab_name],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "stopped 0 process(es)" in again.stdout


def test_unrecorded_process_in_a_lab_namespace_is_reported_not_killed(lab_name: str) -> None:
    lab = Lab(Topology(lab_name, "vxlan", hosts=1), agents=False).up()
    stranger = subprocess.Popen(["ip", "netns", "exec", lab.hosts["h1"].ns, "sleep", "60"])
    try:
        lab.wait(lambda: Path(f"/proc/{stranger.pid}/comm").read_text().strip() == "sleep", 5)
        report = lab.down()
        assert any(f"pid {stranger.pid} (sleep)" in x for x in report.leftover), report
        assert stranger.poll() is None  # not ours to kill by namespace
        assert lab_namespaces(lab_name) == []
    finally:
        stranger.kill()
        stranger.wait()
