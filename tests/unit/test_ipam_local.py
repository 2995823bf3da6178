"""LocalAllocator: idempotent, skips reserved addresses, round-robin, crash-safe, thread-safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from fabric.api import Handle
from fabric.errors import IPAMError, PoolExhausted
from fabric.fsutil import atomic_write
from fabric.ipam.local import LocalAllocator, gateway_of, usable_hosts

NET = IPv4Network("10.5.7.0/29")  # .0 network, .1 gateway, .7 broadcast: .2-.6 usable


def h(n: int) -> Handle:
    return Handle(f"c{n}", "eth0")


def test_skips_reserved_and_is_idempotent(tmp_path) -> None:
    alloc = LocalAllocator(tmp_path / "a.json", [NET])
    got = [alloc.allocate(h(i)).ip for i in range(5)]
    assert got == [IPv4Address(f"10.5.7.{i}") for i in range(2, 7)]
    assert alloc.allocate(h(3)).ip == IPv4Address("10.5.7.5")  # same handle, same address
    with pytest.raises(PoolExhausted, match="10.5.7.0/29"):
        alloc.allocate(h(99))
    assert gateway_of(NET) == IPv4Address("10.5.7.1") and usable_hosts(NET) == 5


def test_round_robin_does_not_reuse_a_released_address_at_once(tmp_path) -> None:
    alloc = LocalAllocator(tmp_path / "a.json", [NET])
    first = alloc.allocate(h(1)).ip
    alloc.allocate(h(2))
    assert alloc.release(h(1)).ip == first
    assert alloc.release(h(1)) is None
    nxt = alloc.allocate(h(3)).ip
    assert nxt != first and nxt == IPv4Address("10.5.7.4")
    # the cursor wraps around to the freed address once the rest is used
    rest = [alloc.allocate(h(i)).ip for i in (4, 5, 6)]
    assert rest == [IPv4Address("10.5.7.5"), IPv4Address("10.5.7.6"), first]


def test_multiple_chunks_and_chunk_change(tmp_path) -> None:
    second = IPv4Network("10.5.8.0/30")  # only .2 usable
    alloc = LocalAllocator(tmp_path / "a.json", [second, NET])
    ips = [alloc.allocate(h(i)) for i in range(6)]
    assert {a.chunk for a in ips} == {NET, second}
    assert len({a.ip for a in ips}) == 6
    alloc.set_chunks([IPv4Network("10.5.9.0/29")])
    assert len(alloc.outside_chunks()) == 6  # kept, but reported as stale
    assert alloc.allocate(h(0)).ip == ips[0].ip
    assert alloc.allocate(h(50)).ip == IPv4Address("10.5.9.2")


def test_persisted_before_return_and_reloaded(tmp_path) -> None:
    path = tmp_path / "a.json"
    alloc = LocalAllocator(path, [NET])
    a = alloc.allocate(h(1))
    on_disk = json.loads(path.read_text())
    assert on_disk["allocations"]["c1/eth0"]["ip"] == str(a.ip)
    alloc.allocate(h(2))
    alloc.release(h(1))
    again = LocalAllocator(path, [NET])
    assert set(again.allocations()) == {h(2)}
    assert again.allocate(h(3)).ip == IPv4Address("10.5.7.4")  # cursor survived too
    again.clear()
    assert not path.exists() and LocalAllocator(path, [NET]).allocations() == {}


def test_no_allocation_without_chunk(tmp_path) -> None:
    with pytest.raises(IPAMError, match="no address chunk"):
        LocalAllocator(tmp_path / "a.json").allocate(h(1))


def test_corrupt_state_is_a_clear_error_not_a_reset(tmp_path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"allocations": {"c1/eth0": {"ip": "bogus"}}}')
    with pytest.raises(IPAMError, match="corrupt") as err:
        LocalAllocator(path, [NET])
    assert err.value.fix
    assert "bogus" in path.read_text()  # nothing was thrown away


def test_failed_persist_rolls_back(tmp_path) -> None:
    alloc = LocalAllocator(tmp_path / "a.json", [NET])
    first = alloc.allocate(h(1))
    (tmp_path / "blocker").write_text("")
    alloc.path = tmp_path / "blocker" / "a.json"  # its "directory" is a file: writes fail
    with pytest.raises(IPAMError, match="persist"):
        alloc.allocate(h(2))
    with pytest.raises(IPAMError, match="persist"):
        alloc.release(h(1))
    assert alloc.allocations() == {h(1): first}  # memory matches the last good state


def test_threads_never_share_an_address(tmp_path) -> None:
    alloc = LocalAllocator(tmp_path / "a.json", [IPv4Network("10.6.0.0/24")])
    results: list = []

    def worker(base: int) -> None:
        for i in range(25):
            results.append(alloc.allocate(h(base + i)))

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 100
    assert len({a.ip for a in results}) == 100
    assert len(LocalAllocator(tmp_path / "a.json").allocations()) == 100


_CHILD = """
import sys
from ipaddress import IPv4Network
from fabric.api import Handle
from fabric.ipam.local import LocalAllocator
alloc = LocalAllocator(sys.argv[1], [IPv4Network("10.6.0.0/22")])
i = 0
while True:
    a = alloc.allocate(Handle(f"child{i}", "eth0"))
    print(a.handle.key(), a.ip, flush=True)
    if i % 3 == 2:
        alloc.release(Handle(f"child{i - 1}", "eth0"))
        print("released", f"child{i - 1}/eth0", flush=True)
    i += 1
"""


def test_kill_9_mid_allocation_loses_nothing(tmp_path) -> None:
    """A process allocating in a loop is SIGKILLed; every address it reported is on disk,
    and a restarted allocator never hands any of them out again."""
    path = tmp_path / "a.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    reported: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if parts[0] == "released":
                reported.pop(parts[1], None)
            else:
                reported[parts[0]] = parts[1]
            if len(reported) >= 120:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    restarted = LocalAllocator(path, [IPv4Network("10.6.0.0/22")])
    on_disk = {h.key(): str(a.ip) for h, a in restarted.allocations().items()}
    for key, ip in reported.items():
        assert on_disk.get(key) == ip, f"{key} was handed {ip} but is not persisted"
    new = [restarted.allocate(Handle(f"after{i}", "eth0")).ip for i in range(50)]
    assert not {str(ip) for ip in new} & set(on_disk.values())
    assert len(set(new)) == 50


def test_atomic_write_leaves_no_temp_files(tmp_path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write(target, "one")
    atomic_write(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]
