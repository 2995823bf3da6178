"""Every installed backend is held to what its ``Capabilities`` claim (fabric/api.py):
``encryption`` — with ``PasswordFile`` set, pods talk and no plaintext of theirs crosses the
underlay; ``multicast`` — one multicast datagram from a pod reaches a listening pod on every
other node exactly once."""

from __future__ import annotations

import os

import pytest

from fabric.lab import Topology
from fabric.plugins import load_plugin
from tests.lab.lab_util import installed_backends, needs_root, stack_missing, up_or_skip
from tests.lab.weave_util import multicast_roundtrip, plaintext_seen

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]


def _claiming() -> list[str]:
    out = []
    for b in installed_backends():
        caps = load_plugin("backend", b).capabilities
        if caps.encryption or caps.multicast:
            out.append(b)
    return out


@pytest.mark.parametrize("backend", _claiming())
def test_backend_keeps_its_claims(backend: str, lab_name: str, tmp_path) -> None:
    caps = load_plugin("backend", backend).capabilities
    ipam = load_plugin("backend", backend).default_ipam
    if why := stack_missing(backend, etcd=ipam != "ring"):
        pytest.skip(why)
    opts = {}
    if caps.encryption:
        pw = tmp_path / "pw"
        pw.write_text("capability check\n")
        os.chmod(pw, 0o600)
        opts["PasswordFile"] = str(pw)
    lab = up_or_skip(Topology(lab_name, backend, hosts=3, pods_per_host=1,
                              backend_opts={backend: opts}))
    try:
        res = lab.converge(timeout=30)
        assert res.ok, res.summary()
        if caps.encryption:
            assert not plaintext_seen(lab, "h1p1", "h3p1"), "plaintext on the underlay"
        if caps.multicast:
            counts = multicast_roundtrip(lab, "h2p1", ["h1p1", "h3p1"], f"mc-{backend}")
            assert counts == {"h1p1": 1, "h3p1": 1}, counts
    finally:
        lab.down()
