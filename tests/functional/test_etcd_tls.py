"""The agent against a TLS-only etcd (client certificates required) in a namespace.

A real etcd runs in a namespace this test creates, with certificates the test generates
(``--client-cert-auth``). The store, its watch stream and a real `fabric up` connect with
``--etcd-cafile/--etcd-certfile/--etcd-keyfile`` and an endpoint list whose first entry
is down; wrong or missing credentials fail with an error naming the TLS options.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.functional.netns_util import add_ns, namespaces, needs_root, sh
from tests.functional.tls_certs import CA

pytestmark = [pytest.mark.root, needs_root,
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed")]

IP = "198.18.251.1"
LIVE = f"https://{IP}:2379"
DEAD = f"https://{IP}:2391"  # nothing listens: connection refused
BIN = Path(sys.executable).parent

# runs inside the namespace: store calls + a watch through the endpoint list, JSON out
STORE_SCRIPT = r"""
import json, sys, threading
from fabric.store import connect, TLSFiles
from fabric.errors import FabricError
urls, ca, cert, key, pre = sys.argv[1:6]
out = {}
try:
    st = connect(urls, tls=TLSFiles(ca, cert, key))
    got = threading.Event(); seen = []
    _, rev = st.get_prefix(pre)
    w = st.watch_prefix(pre, lambda evs: (seen.extend(e.kv.key for e in evs), got.set()),
                        rev + 1)
    st.put(pre + "a", "1")
    out.update(value=st.get(pre + "a").value, created=st.create(pre + "b", "2"),
               watched=got.wait(10) and seen, url=st.url)
    w.cancel(); st.close()
except FabricError as exc:
    out.update(error=exc.message, fix=exc.fix)
print(json.dumps(out))
"""


# a TCP relay in front of etcd: "endpoint 1"; killing it is that member dying (TLS passes
# through untouched: the certificate names the same address)
RELAY_SCRIPT = r"""
import socket, sys, threading
listen, target = int(sys.argv[1]), (sys.argv[2], int(sys.argv[3]))
srv = socket.create_server((sys.argv[2], listen))
print("ready", flush=True)
def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
while True:
    c, _ = srv.accept()
    u = socket.create_connection(target)
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"""

# the store through [relay, direct]: works via the relay, the relay dies, calls and the
# watch go on via the direct endpoint; JSON lines on stdout, driven by lines on stdin
FAILOVER_SCRIPT = r"""
import json, sys, threading, time
from fabric.store import connect, TLSFiles
from fabric.errors import StoreUnavailable
st = connect(sys.argv[1], tls=TLSFiles(*sys.argv[2:5]))
seen = []
_, rev = st.get_prefix("/fo/")
w = st.watch_prefix("/fo/", lambda evs: seen.extend(e.kv.key for e in evs), rev + 1)
st.put("/fo/before", "1")
deadline = time.monotonic() + 15
while not seen and time.monotonic() < deadline:  # the stream delivers it (slow when loaded)
    time.sleep(0.05)
print(json.dumps({"url": st.url, "seen": seen}), flush=True)
sys.stdin.readline()  # the relay is dead now
errors = 0
for i in range(3):
    try:
        st.put(f"/fo/after{i}", "1")
    except StoreUnavailable:
        errors += 1  # a request that may have reached the dead member is not re-sent
deadline = time.monotonic() + 15
while len(seen) < 1 + 3 - errors and time.monotonic() < deadline:
    time.sleep(0.1)
print(json.dumps({"url": st.url, "seen": seen, "errors": errors}), flush=True)
w.cancel(); st.close()
"""


def in_ns(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout)


def store_run(ns: str, urls: str, ca: str, cert: str = "", key: str = "",
              prefix: str = "/tls/") -> dict:
    proc = in_ns(ns, sys.executable, "-c", STORE_SCRIPT, urls, ca, cert, key, prefix)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def tls_etcd(tmp_path: Path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = CA(pki)
    # etcd's gateway dials its own gRPC port with the server certificate: it needs both usages
    server = ca.issue("etcd-server", server_ips=(IP,), client=True)
    client = ca.issue("fabric-agent", client=True)
    with namespaces("h7tls") as ns:
        add_ns(ns)
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", ns=ns)
        sh("ip", "addr", "add", f"{IP}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0p", "up", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        with open(tmp_path / "etcd.log", "wb") as log:  # etcd holds its own copy
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "etcd", "--name", "t", "--data-dir",
                 str(tmp_path / "etcd"), "--listen-client-urls", LIVE,
                 "--advertise-client-urls", LIVE,
                 "--listen-peer-urls", "http://127.0.0.1:2380",
                 "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                 "--initial-cluster", "t=http://127.0.0.1:2380",
                 "--cert-file", server[0], "--key-file", server[1],
                 "--trusted-ca-file", str(ca.path), "--client-cert-auth"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while "value" not in store_run(ns, LIVE, str(ca.path), *client, prefix="/ready/"):
                assert proc.poll() is None, (tmp_path / "etcd.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "TLS etcd did not come up"
                time.sleep(0.3)
            yield ns, ca, client, pki
        finally:
            os.kill(proc.pid, signal.SIGTERM)  # ip netns exec execs etcd: same pid
            proc.wait(10)


def test_store_and_watch_over_tls_with_the_first_endpoint_down(tls_etcd) -> None:
    ns, ca, client, _ = tls_etcd
    out = store_run(ns, f"{DEAD},{LIVE}", str(ca.path), *client)
    assert "error" not in out, out
    assert out["value"] == "1" and out["created"] is True
    assert out["watched"] == ["/tls/a", "/tls/b"]  # the watch stream uses TLS + failover too
    assert out["url"] == LIVE


def test_missing_or_foreign_credentials_name_the_tls_options(tls_etcd) -> None:
    ns, ca, client, pki = tls_etcd
    no_cert = store_run(ns, LIVE, str(ca.path))  # etcd requires a client certificate
    assert "TLS" in no_cert["error"] and "--etcd-certfile" in no_cert["fix"]
    rogue = CA(pki, "rogue")
    foreign = store_run(ns, LIVE, str(rogue.path), *client)  # server not signed by that CA
    assert "CERTIFICATE_VERIFY_FAILED" in foreign["error"] and "--etcd-cafile" in foreign["fix"]
    plain = store_run(ns, f"http://{IP}:2379", "", "", "")
    assert "error" in plain  # an http client gets no answer from a TLS-only etcd


def test_agent_up_with_tls_files_and_endpoint_list(tls_etcd, tmp_path: Path) -> None:
    """`fabric up` with flannel's flags: lease in the TLS etcd, READY=1, subnet file."""
    ns, ca, client, _ = tls_etcd
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(60)
    state, subnet_file = tmp_path / "state", tmp_path / "flannel" / "subnet.env"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path),
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    argv = ["ip", "netns", "exec", ns, str(BIN / "fabric"), "--log-format", "json", "up",
            "--backend", "vxlan", "--network", "10.77.0.0/16", "--iface", "eth0",
            "--node-name", "tls1", "--state-dir", str(state),
            "--etcd-endpoints", f"{DEAD},{LIVE}", "--etcd-cafile", str(ca.path),
            "--etcd-certfile", client[0], "--etcd-keyfile", client[1],
            "--subnet-file", str(subnet_file), "--ip-masq"]
    with open(tmp_path / "agent.log", "w") as log:
        agent = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg.splitlines(), msg
        env_file = subnet_file.read_text()  # written before READY=1
        assert "FLANNEL_NETWORK=10.77.0.0/16" in env_file and "FLANNEL_IPMASQ=true" in env_file
        status = json.loads(in_ns(ns, str(BIN / "fabric"), "status", "--json", "--state-dir",
                                  str(state)).stdout)
        lease = status["networks"][0]["ipam_status"]["key"]
        got = in_ns(ns, sys.executable, "-c",
                    "import sys; from fabric.store import connect, TLSFiles; "
                    "print(connect(sys.argv[1], TLSFiles(*sys.argv[2:5])).get(sys.argv[5]).value)",
                    LIVE, str(ca.path), *client, lease)
        assert json.loads(got.stdout)["BackendType"] == "vxlan", got.stderr
        os.kill(agent.pid, signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode().splitlines()
        assert agent.wait(30) == 0
        lines = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines()
                 if line.startswith("{")]
        assert any("is unreachable; using" in rec["message"] for rec in lines), lines[:5]
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait(10)
        in_ns(ns, str(BIN / "fabric"), "down", "--state-dir", str(state))
        sock.close()


def test_metrics_families_parse(tls_etcd, tmp_path: Path) -> None:
    """--metrics-addr serves prometheus text that prometheus-client's parser reads."""
    ns, ca, client, _ = tls_etcd
    state = tmp_path / "state"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    argv = ["ip", "netns", "exec", ns, str(BIN / "fabric"), "up", "--backend", "vxlan",
            "--network", "10.78.0.0/16", "--iface", "eth0", "--state-dir", str(state),
            "--etcd", LIVE, "--etcd-cafile", str(ca.path), "--etcd-certfile", client[0],
            "--etcd-keyfile", client[1], "--metrics-addr", f"{IP}:9402"]
    agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        fetch = ("import sys, urllib.request as u\n"
                 "print(u.urlopen(sys.argv[1], timeout=2).read().decode())")
        deadline = time.monotonic() + 30
        while True:
            out = in_ns(ns, sys.executable, "-c", fetch, f"http://{IP}:9402/metrics")
            families = {f.name: f for f in text_string_to_metric_families(out.stdout)}
            ready = families.get("netfabric_network_ready")
            if ready and [s.value for s in ready.samples] == [1.0]:
                break
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(0.3)
        assert {"netfabric_pods", "netfabric_ipam_addresses", "netfabric_peers",
                "netfabric_cni_request_duration_seconds"} <= set(families)
        free = [s for s in families["netfabric_ipam_addresses"].samples
                if s.labels["state"] == "free"]
        assert free and free[0].value == 254
    finally:
        os.kill(agent.pid, signal.SIGTERM)
        agent.wait(30)
        in_ns(ns, str(BIN / "fabric"), "down", "--state-dir", str(state))


def test_failover_when_the_endpoint_in_use_dies(tls_etcd) -> None:
    ns, ca, client, _ = tls_etcd
    relay = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RELAY_SCRIPT,
                              "2392", IP, "2379"], stdout=subprocess.PIPE, text=True)
    user = None
    try:
        assert relay.stdout.readline().strip() == "ready"
        user = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                 FAILOVER_SCRIPT, f"https://{IP}:2392,{LIVE}", str(ca.path),
                                 *client], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        first = json.loads(user.stdout.readline())
        assert first == {"url": f"https://{IP}:2392", "seen": ["/fo/before"]}
        os.kill(relay.pid, signal.SIGKILL)  # endpoint 1 dies under the store and its watch
        relay.wait(10)
        user.stdin.write("go\n")
        user.stdin.flush()
        after = json.loads(user.stdout.readline())
        assert after["url"] == LIVE and after["errors"] <= 1
        written = [f"/fo/after{i}" for i in range(3)][after["errors"]:]
        assert after["seen"] == ["/fo/before", *written]  # the watch resumed, nothing lost
        assert user.wait(20) == 0
    finally:
        for proc in (relay, user):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_installed_plugin_attaches_a_pod_in_a_namespace(tls_etcd, tmp_path: Path) -> None:
    """`fabric cni install` output used as a runtime would, against a real vxlan agent:
    the host's python3 runs the zipapp, the pod namespace gets its address and route."""
    ns, ca, client, _ = tls_etcd
    state, bin_dir, conf_dir = tmp_path / "state", tmp_path / "bin", tmp_path / "net.d"
    pod = f"{ns}p"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    argv = ["ip", "netns", "exec", ns, str(BIN / "fabric"), "up", "--backend", "vxlan",
            "--network", "10.79.0.0/16", "--name", "vx", "--iface", "eth0",
            "--state-dir", str(state), "--etcd-endpoints", f"{DEAD},{LIVE}",
            "--etcd-cafile", str(ca.path), "--etcd-certfile", client[0],
            "--etcd-keyfile", client[1]]
    agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = subprocess.run([str(BIN / "fabric"), "cni", "install", "--bin-dir", str(bin_dir),
                               "--conf-dir", str(conf_dir), "--network", "vx",
                               "--agent-socket", str(state / "agent.sock"),
                               "--python", "/usr/bin/python3"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        conflist = json.loads((conf_dir / "10-netfabric.conflist").read_text())
        entry = {**conflist["plugins"][0], "name": conflist["name"],
                 "cniVersion": conflist["cniVersion"]}
        add_ns(pod)
        deadline = time.monotonic() + 30
        while True:  # ADD until the agent's network is up (the runtime retries too)
            res = subprocess.run(
                [str(bin_dir / "fabric-cni")], input=json.dumps(entry), text=True,
                capture_output=True, timeout=60,
                env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_IFNAME": "eth0",
                     "CNI_NETNS": f"/run/netns/{pod}", "CNI_PATH": str(bin_dir),
                     "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert res.returncode == 0, res.stdout + res.stderr
        address = json.loads(res.stdout)["ips"][0]["address"]
        assert address.startswith("10.79.")
        inside = sh("ip", "-4", "addr", "show", "eth0", ns=pod).stdout
        assert address in inside
        res = subprocess.run(
            [str(bin_dir / "fabric-cni")], input=json.dumps(entry), text=True,
            capture_output=True, timeout=60,
            env={"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "ctr1", "CNI_IFNAME": "eth0",
                 "CNI_NETNS": f"/run/netns/{pod}", "CNI_PATH": str(bin_dir)})
        assert res.returncode == 0, res.stdout + res.stderr
        assert "eth0" not in sh("ip", "link", ns=pod).stdout
    finally:
        os.kill(agent.pid, signal.SIGTERM)
        agent.wait(30)
        in_ns(ns, str(BIN / "fabric"), "down", "--state-dir", str(state))
