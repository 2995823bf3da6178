"""The engine alone in a scratch namespace: nft failing or missing keeps the previous rules;
a drifted kernel (table deleted by hand) is rebuilt; teardown leaves nothing."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed"),
]

SCRIPT = textwrap.dedent("""
    import json, subprocess, sys, tempfile
    from ipaddress import IPv4Address, IPv4Interface, IPv4Network
    from pathlib import Path
    from fabric.api import Endpoint, NetworkContext, NetworkSpec, Node, Workload
    from fabric.errors import PolicyError
    from fabric.policy import nftstate
    from fabric.policy.engine import NftablesPolicy
    from fabric.policy.load import load_text

    def ruleset():
        return subprocess.run(["nft", "list", "table", "inet", "netfabric-eng"],
                              capture_output=True, text=True).stdout

    out = {}
    ctx = NetworkContext(NetworkSpec("eng", IPv4Network("10.66.0.0/16"), "fake"),
                         Node("n1", IPv4Address("198.18.66.1"), "lo", 1500),
                         Path(tempfile.mkdtemp(prefix="nfpol-")))
    eng = NftablesPolicy(ctx)
    eng.start()
    wl = Workload("c1", "eth0", "", "db", "default", {"app": "db"})
    eng.endpoint_added(Endpoint(wl, "", "", (IPv4Interface("10.66.0.2/24"),), None, (), 1500))
    deny = load_text('''apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny}
    spec: {podSelector: {}}''')
    eng.set_policies(deny)
    before = ruleset()
    out["isolated"] = "jump in-" in before
    real_which = nftstate.shutil.which
    nftstate.shutil.which = lambda name: "/bin/false"   # nft that fails
    try:
        eng.set_policies([])
    except PolicyError as exc:
        out["failing"] = str(exc)
    nftstate.shutil.which = lambda name: None           # nft missing
    try:
        eng.set_policies([])
    except PolicyError as exc:
        out["missing"] = str(exc)
    nftstate.shutil.which = real_which
    out["kept"] = ruleset() == before and [p.name for p in eng.policies] == ["deny"]
    out["status_error"] = eng.status()["last_error"]
    subprocess.run(["nft", "delete", "table", "inet", "netfabric-eng"], check=True)
    wl2 = Workload("c2", "eth0", "", "web", "default", {"app": "web"})
    eng.endpoint_added(Endpoint(wl2, "", "", (IPv4Interface("10.66.0.3/24"),), None, (), 1500))
    out["rebuilt"] = ruleset().count("jump in-") == 2
    eng.teardown()
    out["tables_after_teardown"] = subprocess.run(["nft", "list", "tables"], capture_output=True,
                                                  text=True).stdout
    print(json.dumps(out))
""")


def test_engine_failures_keep_previous_rules() -> None:
    ns = f"nfpol-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert out["isolated"]
    assert "nft rejected the rules" in out["failing"]
    assert "previous rules are still in force" in out["failing"]
    assert "nft is not installed" in out["missing"]
    assert out["kept"], "a failed transaction changed the kernel or the engine's policies"
    assert out["status_error"] and "nft is not installed" in out["status_error"]
    assert out["rebuilt"], "the engine did not rebuild a table deleted behind its back"
    assert "netfabric-eng" not in out["tables_after_teardown"]


def test_thousand_rule_policy_is_one_transaction() -> None:
    """The benchmark's worker: the real engine in a scratch namespace, nft runs counted."""
    from fabric.bench.policy import rules_bench

    r = rules_bench(1000)
    assert r["apply_transactions"] == 1
    assert r["rules_in_kernel"] == 1002  # 1000 port rules + policy counter + counted drop
    assert r["reply_rules_in_kernel"] == 1002  # the same, for replies of established flows
    assert r["peer_added_transactions"] == 1
    # set elements, plus the new rule generation (its two one-rule chains: flush + add each);
    # no endpoint chain is rewritten
    assert r["peer_added_batch_commands"] <= 10
