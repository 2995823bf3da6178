"""`fabric bench matrix` on real labs: one backend (hostgw, both variants) with the underlay
and reference rows, every metric filled or its error named; Ctrl-C leaves no lab behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.lab_util import needs_root, stack_missing

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]
ROUND = ("tcp1_gbps", "tcp4_gbps", "cpu_s_per_gb", "rr_per_s", "rtt_p50_us", "rtt_p99_us",
         "ping_ms")
ONCE = ("cni_add_p50_ms", "cni_add_p99_ms", "cni_del_p50_ms", "cni_del_p99_ms",
        "cni_add20_p50_ms", "cni_add20_p99_ms", "agent_rss_mb", "join_s", "leave_s")


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def test_quick_matrix_one_backend(tmp_path: Path) -> None:
    for tool in ("sockperf", "cc"):
        if not any(Path(d, tool).exists() for d in os.environ["PATH"].split(":")):
            pytest.skip(f"{tool} is not installed")
    if why := stack_missing("hostgw"):
        pytest.skip(why)
    res = subprocess.run([str(Path(sys.executable).parent / "fabric"), "bench", "matrix",
                          "--backends", "hostgw", "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(res.stdout)  # JSON alone on stdout
    rows = {(r["backend"], r["variant"]): r for r in data["rows"]}
    assert set(rows) == {("underlay", ""), ("kernel-routed", ""), ("kernel-vxlan", ""),
                         ("c-udp", ""), ("hostgw", "default"), ("hostgw", "fastpath")}
    for key, row in rows.items():
        assert row["error"] is None, (key, row)
        for m in ROUND:  # every round metric filled, or its error named
            assert row[m] is not None or row["errors"], (key, m, row)
    for variant in ("default", "fastpath"):
        row = rows[("hostgw", variant)]
        assert row["reference"] == "kernel-routed"
        assert row["ratio_to_underlay"] > 0 and row["ratio_to_reference"] > 0
        for m in ONCE:  # filled, or the error of its step named (cni, rss, join, leave)
            step = "rss" if m == "agent_rss_mb" else m.split("_")[0]
            assert row.get(m) is not None or step in row["errors"], (m, row)
        assert row["rss_pods"] == 20
    assert rows[("kernel-routed", "")]["cni_plugin"] == "bridge+host-local"
    assert "round 2/2" in res.stderr and "ETA" in res.stderr  # progress on stderr
    assert {"kernel", "cpus", "loadavg_before"} <= set(data["machine"])
    assert (tmp_path / "matrix.md").read_text().count("\n| ") >= 6
    assert json.loads((tmp_path / "matrix.json").read_text())["rows"]
    tag = re.search(r"labs (mx\w+)\*", res.stderr).group(1)
    assert _namespaces(f"nfl-{tag}") == []


def test_ctrl_c_leaves_no_lab() -> None:
    if why := stack_missing("hostgw"):
        pytest.skip(why)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "fabric"), "bench", "matrix",
                             "--backends", "hostgw", "--quick"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env())
    tag, seen = None, []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # interrupt once the backend labs are up and measuring
            seen.append(line)
            if m := re.search(r"labs (mx\w+)\*", line):
                tag = m.group(1)
            if "round 1/2" in line:
                break
        assert tag, "".join(seen)
        assert _namespaces(f"nfl-{tag}")  # labs are up
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)
    assert _namespaces(f"nfl-{tag}") == []
    assert not any(p.name.startswith(tag) for p in Path("/run/netfabric-lab").glob("*"))
