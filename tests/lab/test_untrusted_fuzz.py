"""Hypothesis writes random and adversarial lease records into the real etcd of a running
vxlan lab (issue 16): no route outside the pod network is ever added or removed on any
host (`ip monitor route` sees every change, also transient ones) and the agents keep
serving. Bounded: 60 examples."""

from __future__ import annotations

import json
import subprocess
import time
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.lab import Lab, Topology
from fabric.lab.underlay import etcd_url
from tests.lab.lab_util import needs_root, outside_routes, stack_missing, up_or_skip

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]

POD_NET = IPv4Network("10.244.0.0/16")
_TYPES = {"unicast", "local", "broadcast", "blackhole", "unreachable", "prohibit", "anycast",
          "multicast", "throw", "nat"}

# argv cannot carry NUL bytes or lone surrogates; everything else goes
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=40)

ips = st.one_of(
    st.sampled_from(["0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1", "198.18.0.1",
                     "198.18.0.2", "198.18.0.11", "198.18.0.12", "198.18.0.99", "10.244.1.1",
                     "169.254.1.1", "240.0.0.1"]),
    st.builds(lambda n: str(IPv4Address(n)), st.integers(0, 2**32 - 1)),
    text.map(lambda t: t[:12]),
)
macs = st.one_of(st.sampled_from(["0a:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00",
                                  "01:00:5e:00:00:01", "zz", ""]),
                 st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)))
json_junk = st.recursive(st.none() | st.booleans() | st.integers() | text.map(lambda t: t[:8]),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(
                             text.map(lambda t: t[:8]), c, max_size=3), max_leaves=8)
values = st.one_of(
    st.builds(lambda ip, mac, vni: json.dumps({"PublicIP": ip, "BackendType": "vxlan",
                                                "BackendData": {"VtepMAC": mac, "VNI": vni}}),
              ips, macs, st.one_of(st.just(1), st.integers(-5, 2**25), text.map(lambda t: t[:3]))),
    json_junk.map(json.dumps),
    text,
)
subnets = st.one_of(
    st.sampled_from(["0.0.0.0-0", "198.18.0.0-24", "198.18.0.0-15", "10.244.0.0-16",
                     "10.244.9.0-24", "10.244.10.0-25", "10.99.0.0-24", "127.0.0.0-8",
                     "224.0.0.0-4", "10.244.255.0-24"]),
    st.builds(lambda n, ln: f"{IPv4Network((n, ln), strict=False).network_address}-{ln}",
              st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.text(alphabet="0123456789.-abc", max_size=15),
)


def _dst(line: str) -> IPv4Network | None:
    words = line.split()
    if words and words[0] == "Deleted":
        words = words[1:]
    if words and words[0] in _TYPES:
        words = words[1:]
    if not words:
        return None
    dst = "0.0.0.0/0" if words[0] == "default" else words[0]
    try:
        return IPv4Network(dst, strict=False)
    except ValueError:
        return None


def test_random_records_never_touch_routes_outside_the_pod_network(lab_name: str) -> None:
    if why := stack_missing("vxlan"):
        pytest.skip(why)
    lab: Lab = up_or_skip(Topology(lab_name, "vxlan", hosts=2, pods_per_host=1))
    monitors: dict[str, subprocess.Popen] = {}
    prefix = f"/netfabric/{lab.topo.network_names()[0]}/subnets/"
    written: set[str] = set()
    try:
        res = lab.converge(timeout=20)
        assert res.ok, (res.summary(), {h: (lab.exec(h, ["ip", "route"]).stdout, lab.agent_call(
            h, {"op": "status"})["networks"][0]) for h in lab.hosts})
        before = {h: outside_routes(lab, h, POD_NET) for h in lab.hosts}
        monitors = {h.name: subprocess.Popen(
            ["ip", "-n", h.ns, "-4", "monitor", "route"], stdout=subprocess.PIPE, text=True)
            for h in lab.hosts.values()}
        own = [lab.agent_call(h, {"op": "status"})["networks"][0]["ipam_status"]["key"]
               for h in lab.hosts]

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(key=st.one_of(subnets.map(lambda s: prefix + s), st.sampled_from(own)),
               value=values, delete=st.booleans())
        def write(key: str, value: str, delete: bool) -> None:
            base = ["etcdctl", "--endpoints", etcd_url()]
            if delete and key in written:
                lab.exec("sw", [*base, "del", key])
            else:
                out = lab.exec("sw", [*base, "put", "--", key, value])
                if out.ok:
                    written.add(key)
            time.sleep(0.05)
            for h in lab.hosts:  # the agents keep serving
                assert lab.agent_call(h, {"op": "status"}, timeout=5)["networks"][0]["ready"]

        write()
        base = ["etcdctl", "--endpoints", etcd_url()]
        for key in written - set(own):
            lab.exec("sw", [*base, "del", "--", key])
        time.sleep(3)  # the agents re-assert their own leases and drop what was deleted
        for h in lab.hosts:
            assert outside_routes(lab, h, POD_NET) == before[h], h
    finally:
        events = {}
        for name, proc in monitors.items():
            proc.terminate()
            events[name] = proc.communicate(timeout=5)[0].splitlines()
        lab.down()
    bad = {h: [ln for ln in lines if (d := _dst(ln)) is not None and not d.subnet_of(POD_NET)]
           for h, lines in events.items()}
    assert bad == {h: [] for h in events}, bad
    assert any(events.values())  # the monitors did see the pod-network churn
