"""weave-fastdp's ESP probe: runs in a throwaway namespace, says why when the kernel lacks it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fabric.weave.fastdp import probe_esp

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                 reason="needs root and unshare")]


def _xfrm_states() -> str:
    return subprocess.run(["ip", "xfrm", "state"], capture_output=True, text=True).stdout


def test_probe_answers_and_leaves_nothing_behind() -> None:
    before = _xfrm_states()
    why = probe_esp()
    assert why is None or "rfc4106(gcm(aes))" in why
    if why is not None:  # this machine's kernel: say what is missing, plainly
        assert "unavailable" in why and len(why) < 300
    assert _xfrm_states() == before  # nothing added in our own namespace
