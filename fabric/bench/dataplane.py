"""``fabric bench dataplane``: the userspace engine alone between two namespaces.

Namespaces ``nfdp-XXXX-a`` / ``-b`` are joined by a veth (198.19.255.1/30 and
.2/30, the underlay). Each runs ``python -m fabric.dataplane`` on a TUN (L3,
flannel udp format) or TAP (L2, optionally sealed) device. iperf3 measures the
veth directly (baseline) and through the engines, alternating (ABBA) in the
same run; ``ratio`` is the median of per-round engine / underlay ratios.
CPU seconds per GB come from /proc/stat (whole machine, all processes) and
from the two engine processes alone. ``--with-fallback`` also measures the
per-packet fallback (no offloads: one packet per system call) for the speedup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, FabricError, KernelFeatureMissing

__all__ = ["register", "run", "TARGETS", "EnginePair"]

TARGETS = {"tun": 2.5, "tap": 2.0}  # Gbit/s (issue 4), reported, not enforced
UNDER_A, UNDER_B = "198.19.255.1", "198.19.255.2"
ROUTED_NAMES = {"a": "0a:fb:00:00:00:01", "b": "0a:fb:00:00:00:02"}
CLASSIC_INNER = ("10.252.0.1/24", "10.252.0.2/24")  # --vs-classic: the second engine pair
INNER = {"tun": ("10.250.1.1/16", "10.250.2.1/16"), "tap": ("10.251.0.1/24", "10.251.0.2/24")}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("dataplane", help="userspace engine between two namespaces")
    p.add_argument("--mode", choices=["tun", "tap"], default="tun")
    p.add_argument("--encrypt", action="store_true", help="seal the L2 path (tap only)")
    p.add_argument("--routed", action="store_true",
                   help="tap: the weave-routed format (origin/dst header, WeaveRoutes)")
    p.add_argument("--vs-classic", action="store_true",
                   help="with --routed: also run classic L2 engines and alternate them in the "
                        "same rounds (routed / classic ratio)")
    p.add_argument("--cipher", default="aesgcm", choices=["aesgcm", "chacha20poly1305"])
    p.add_argument("--no-offload", action="store_true", help="measure the fallback only")
    p.add_argument("--with-fallback", action="store_true",
                   help="also measure the per-packet fallback in the same run")
    p.add_argument("--partial-checksum", action="store_true",
                   help="tun: leave inner checksums partial on the wire (not flannel-compatible)")
    p.add_argument("--split", action="store_true",
                   help="one process per direction instead of one thread per direction")
    p.add_argument("--bidir", action="store_true",
                   help="traffic both ways at once (iperf3 --bidir; sum of both directions)")
    p.add_argument("--duration", type=float, default=5, help="seconds per iperf3 run")
    p.add_argument("--repeat", type=int, default=1, help="rounds of (underlay, engine)")
    p.add_argument("--json", type=Path, dest="json_file", help="also write the JSON here")
    p.add_argument("--table", action="store_true", help="print the table on stdout too")
    p.set_defaults(func=cmd_dataplane)


def _sh(*args: str, ns: str | None = None, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def _busy_jiffies() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait


def _proc_jiffies(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(parts[11]) + int(parts[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


class EnginePair:
    """Two namespaces, a veth and (optionally) an engine in each; removed by close()."""

    def __init__(self, tag: str) -> None:
        self.a, self.b = f"{tag}-a", f"{tag}-b"
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="nfdp-bench-"))
        for ns in (self.a, self.b):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "set", "lo", "up", ns=ns)
        _sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", self.b,
            ns=self.a)
        for ns, ip in ((self.a, UNDER_A), (self.b, UNDER_B)):
            _sh("ip", "addr", "add", f"{ip}/30", "dev", "eth0", ns=ns)
            _sh("ip", "link", "set", "eth0", "up", ns=ns)

    def start_engines(self, mode: str, *, encrypt: bool = False, cipher: str = "aesgcm",
                      offload: bool | tuple[bool, bool] = True, partial: bool = False,
                      device: str = "nfdp0", port: int = 8285,
                      extra_peers: tuple[str, ...] = (), split: bool = False,
                      routed: bool = False,
                      inner: tuple[str, str] | None = None) -> list[int]:
        """Start an engine in each namespace (``offload`` may differ per side: (a, b))."""
        from fabric.dataplane.crypto import KeyPair

        keys = {}
        if encrypt:
            for side in "ab":
                pair = KeyPair.generate()
                path = self.tmp / f"{side}.key"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(pair.private_bytes())
                keys[side] = (path, pair.public.hex())
        inner = inner or INNER[mode]
        offloads = offload if isinstance(offload, tuple) else (offload, offload)
        pids = []
        sides = (("a", self.a, UNDER_A, UNDER_B, inner[0], "b"),
                 ("b", self.b, UNDER_B, UNDER_A, inner[1], "a"))
        for side, ns, me, other, addr, other_side in sides:
            if mode == "tun":
                other_net = "10.250.2.0/24" if side == "a" else "10.250.1.0/24"
                peer = f"{other_net}={other}:{port}"
            else:
                peer = f"{other}:{port}" + (f":{keys[other_side][1]}" if encrypt else "")
                if routed:
                    peer = f"{ROUTED_NAMES[other_side]}={peer}"
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "fabric.dataplane",
                   "--mode", mode, "--device", device, "--listen", me, "--port", str(port),
                   "--address", addr, "--peer", peer,
                   "--status", str(self.tmp / f"{side}-{device}.json")]
            if encrypt:
                cmd += ["--encrypt", "--cipher", cipher, "--key-file", str(keys[side][0])]
            if not offloads[0 if side == "a" else 1]:
                cmd.append("--no-offload")
            if side == "a":
                for extra in extra_peers:
                    cmd += ["--peer", extra]
            if partial:
                cmd.append("--partial-checksum")
            if split:
                cmd.append("--split")
            if routed:
                cmd += ["--routed", "--name", ROUTED_NAMES[side]]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            line = proc.stdout.readline() if proc.stdout else ""
            try:
                ready = json.loads(line)
            except ValueError:
                ready = {"ready": False, "error": line or "engine exited"}
            if not ready.get("ready"):
                raise FabricError(f"engine in {ns} failed: {ready.get('error')}")
            pids.append(proc.pid)
            if ready.get("helper_pid"):
                pids.append(ready["helper_pid"])
        dst = inner[1].split("/")[0]
        for _ in range(50):  # ARP / first packets
            if _sh("ping", "-c", "1", "-W", "0.2", dst, ns=self.a, check=False).returncode == 0:
                break
        else:
            raise FabricError(f"no ping through the {mode} engines to {dst}")
        return pids

    def status(self, side: str, device: str = "nfdp0", wait: float = 0.6) -> dict:
        """The engine's last status dump (written every 0.5 s)."""
        time.sleep(wait)
        return json.loads((self.tmp / f"{side}-{device}.json").read_text())

    def stop_engines(self) -> list[dict]:
        status = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in sorted(self.tmp.glob("*-*.json")):
            with contextlib.suppress(ValueError):
                status.append(json.loads(f.read_text()))
            f.unlink()
        self.procs = []
        return status

    def iperf(self, dst: str, seconds: float, pids: list[int],
              bidir: bool = False) -> dict[str, Any]:
        server = subprocess.Popen(["ip", "netns", "exec", self.b, "iperf3", "-s", "-1", "-B", dst],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            j0, p0, t0 = _busy_jiffies(), _proc_jiffies(pids), time.monotonic()
            res = _sh("iperf3", "-c", dst, "-t", str(max(1, round(seconds))), "-J",
                      *(["--bidir"] if bidir else []), ns=self.a, check=False,
                      timeout=seconds + 30)
            j1, p1, t1 = _busy_jiffies(), _proc_jiffies(pids), time.monotonic()
        finally:
            if server.poll() is None:
                server.terminate()
            server.wait(timeout=5)
        try:
            data = json.loads(res.stdout)
            recv = dict(data["end"]["sum_received"])
            sent = data["end"]["sum_sent"]
            back = data["end"].get("sum_received_bidir_reverse")
            if bidir and back:
                recv["bytes"] += back["bytes"]
                recv["bits_per_second"] += back["bits_per_second"]
        except (ValueError, KeyError) as exc:
            raise FabricError(f"iperf3 to {dst} failed: {res.stdout[-300:]} {res.stderr[-300:]}") \
                from exc
        tick = os.sysconf("SC_CLK_TCK")
        gb = recv["bytes"] / 1e9
        return {"gbps": round(recv["bits_per_second"] / 1e9, 3), "bytes": recv["bytes"],
                "retransmits": sent.get("retransmits"), "wall_s": round(t1 - t0, 2),
                "cpu_s_per_gb": round((j1 - j0) / tick / gb, 3) if gb else None,
                "engine_cpu_s_per_gb": round((p1 - p0) / tick / gb, 3) if gb and pids else None}

    def close(self) -> None:
        self.stop_engines()
        for ns in (self.a, self.b):
            _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def run(mode: str = "tun", *, encrypt: bool = False, cipher: str = "aesgcm",
        offload: bool = True, with_fallback: bool = False, partial: bool = False,
        duration: float = 5, repeat: int = 1, split: bool = False,
        bidir: bool = False, routed: bool = False, vs_classic: bool = False) -> dict[str, Any]:
    """Build the pair, measure, remove everything; returns the result mapping."""
    if mode not in TARGETS:
        raise ConfigError(f"--mode {mode!r} is invalid", fix="use tun or tap")
    if encrypt and mode != "tap":
        raise ConfigError("--encrypt needs --mode tap", fix="the sealed path is L2 only")
    if routed and mode != "tap":
        raise ConfigError("--routed needs --mode tap", fix="the routed format is L2 only")
    if vs_classic and not routed:
        raise ConfigError("--vs-classic compares the routed format", fix="add --routed")
    if not 1 <= duration <= 120 or not 1 <= repeat <= 20:
        raise ConfigError("--duration must be 1-120 s (whole seconds) and --repeat 1-20")
    if os.geteuid() != 0:
        raise ConfigError("fabric bench dataplane needs root", fix="run it as root")
    if shutil.which("iperf3") is None:
        raise ConfigError("iperf3 is not installed", fix="apt-get install iperf3")
    if not os.path.exists("/dev/net/tun"):
        raise KernelFeatureMissing("TUN/TAP (/dev/net/tun)")
    pair = EnginePair(f"nfdp-{secrets.token_hex(2)}")
    dst = INNER[mode][1].split("/")[0]
    runs: list[dict[str, Any]] = []
    status: list[dict] = []
    fb_status: list[dict] = []
    try:
        pids = pair.start_engines(mode, encrypt=encrypt, cipher=cipher, offload=offload,
                                  partial=partial, split=split, routed=routed)
        targets = {"underlay": (UNDER_B, []), "engine": (dst, pids)}
        if vs_classic:  # same namespaces, other device, port and subnet: alternated per round
            cpids = pair.start_engines(mode, encrypt=encrypt, cipher=cipher, offload=offload,
                                       device="nfdp1", port=8287, split=split,
                                       inner=CLASSIC_INNER)
            targets["classic"] = (CLASSIC_INNER[1].split("/")[0], cpids)
        pair.iperf(UNDER_B, 1, [])  # warm-up
        for kind in targets:
            if kind != "underlay":
                pair.iperf(targets[kind][0], 1, targets[kind][1])
        kinds = list(targets)
        for i in range(repeat):
            for kind in (kinds if i % 2 == 0 else kinds[::-1]):
                res = pair.iperf(targets[kind][0], duration, targets[kind][1], bidir)
                runs.append({"run": i + 1, "kind": kind, **res})
        status = pair.stop_engines()
        if with_fallback and offload:
            pids = pair.start_engines(mode, encrypt=encrypt, cipher=cipher, offload=False,
                                      partial=partial, port=8286, split=split, routed=routed)
            for i in range(repeat):
                res = pair.iperf(dst, duration, pids, bidir)
                runs.append({"run": i + 1, "kind": "fallback", **res})
            fb_status = pair.stop_engines()
    finally:
        pair.close()

    def pick(kind: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["kind"] == kind and r[key] is not None]

    under, eng, fb = pick("underlay", "gbps"), pick("engine", "gbps"), pick("fallback", "gbps")
    per_round = [e / u for u, e in zip(under, eng, strict=False) if u]
    classic = pick("classic", "gbps")
    vs_round = [e / c for c, e in zip(classic, eng, strict=False) if c]
    gbps = _median(eng)
    return {
        "bench": "dataplane",
        "mode": mode,
        "encrypt": encrypt,
        "cipher": cipher if encrypt else None,
        "offload": offload,
        "wire": "flannel-udp (one IPv4 packet per datagram)" if mode == "tun"
                else ("routed l2 super-frames" if routed else "l2 super-frames")
        + (" sealed" if encrypt else ""),
        "routed": routed,
        "inner_checksum": "partial" if partial and mode == "tun" else "full",
        "duration_s": duration,
        "repeat": repeat,
        "workers": "process per direction" if split else "thread per direction",
        "bidir": bidir,
        "underlay_gbps": _median(under),
        "engine_gbps": gbps,
        "ratio": _median(per_round),
        "fallback_gbps": _median(fb),
        "classic_gbps": _median(classic),
        "routed_vs_classic": _median(vs_round),
        "routed_vs_classic_cpu": round(_median(pick("engine", "engine_cpu_s_per_gb"))
                                       / _median(pick("classic", "engine_cpu_s_per_gb")), 3)
        if classic and _median(pick("classic", "engine_cpu_s_per_gb")) else None,
        "speedup_vs_fallback": round(gbps / _median(fb), 2) if fb and gbps and _median(fb)
        else None,
        "cpu_s_per_gb": {"underlay": _median(pick("underlay", "cpu_s_per_gb")),
                         "engine_total": _median(pick("engine", "cpu_s_per_gb")),
                         "engine_processes": _median(pick("engine", "engine_cpu_s_per_gb")),
                         "fallback_total": _median(pick("fallback", "cpu_s_per_gb"))},
        "target_gbps": TARGETS[mode],
        "meets_target": None if gbps is None else gbps >= TARGETS[mode],
        "engine": [{k: s.get(k) for k in ("device", "fast_path", "offload", "fallback_reason",
                                          "tx", "rx", "drops", "errors")} for s in status],
        "fallback_engine": [{k: s.get(k) for k in ("fast_path", "fallback_reason", "drops")}
                            for s in fb_status],
        "runs": runs,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg()[0],
        "kernel": platform.release(),
    }


def cmd_dataplane(args: argparse.Namespace) -> int:
    from fabric.bench.report import emit, format_table

    data = run(args.mode, encrypt=args.encrypt, cipher=args.cipher, offload=not args.no_offload,
               with_fallback=args.with_fallback, partial=args.partial_checksum,
               duration=args.duration, repeat=args.repeat, split=args.split,
               bidir=args.bidir, routed=args.routed, vs_classic=args.vs_classic)
    columns = ["run", "kind", "gbps", "retransmits", "cpu_s_per_gb", "engine_cpu_s_per_gb"]
    summary = {"run": "median", "kind": "engine/underlay", "gbps": data["ratio"]}
    emit(data, rows=[*data["runs"], summary], columns=columns, json_file=args.json_file)
    if args.table:
        print(format_table([*data["runs"], summary], columns))
    return 0
