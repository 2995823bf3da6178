"""EtcdStore and PrefixMirror against a real etcd on loopback (no root needed)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from fabric.errors import ConfigError, StoreCompacted, StoreError, StoreUnavailable
from fabric.store import connect
from fabric.store.base import WatchEvent
from fabric.store.etcd import prefix_end
from fabric.store.sync import PrefixMirror
from fabric_testplugins.etcd import EtcdServer, free_port
from tests.util import wait_for


class Recorder:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.errors: list[Exception] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[WatchEvent]) -> None:
        with self.lock:
            self.events.extend(events)

    def error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def keys(self, kind: str) -> list[str]:
        with self.lock:
            return [e.kv.key for e in self.events if e.kind == kind]


def test_kv_operations(store) -> None:
    assert store.get("/t/a") is None
    assert store.get_prefix("/t/") == ([], store.get_prefix("/t/")[1])
    rev = store.put("/t/a", "1")
    kv = store.get("/t/a")
    assert kv.value == "1" and kv.mod_revision == rev and kv.create_revision == rev
    assert not store.create("/t/a", "2")
    assert store.create("/t/b", "2")
    assert store.get("/t/a").value == "1"
    assert store.compare_and_swap("/t/a", "3", kv.mod_revision)
    assert not store.compare_and_swap("/t/a", "4", kv.mod_revision)  # stale revision
    assert not store.compare_and_swap("/t/c", "x", 99)  # absent key never matches
    assert store.compare_and_swap("/t/c", "x", 0)  # 0 = must be absent
    kvs, read_rev = store.get_prefix("/t/")
    assert [k.key for k in kvs] == ["/t/a", "/t/b", "/t/c"]
    assert read_rev >= max(k.mod_revision for k in kvs)
    assert store.get_prefix("/t/a") [0][0].value == "3"
    b = store.get("/t/b")
    assert not store.delete("/t/b", b.mod_revision + 100)
    assert store.delete("/t/b", b.mod_revision)
    assert not store.delete("/t/b")
    assert store.delete("/t/c")
    # unicode keys/values and a prefix that is not a path
    store.put("/t/ü", "→")
    assert store.get("/t/ü").value == "→"
    assert prefix_end("/t/") == "/t0"


def test_leases(store) -> None:
    lease = store.lease(2)
    assert lease.ttl == 2 and lease.refresh() == 2
    store.put("/l/a", "x", lease=lease)
    assert store.get("/l/a").lease == lease.id
    again = store.lease(2, lease_id=lease.id)  # re-attach while alive
    assert again.id == lease.id
    other_ttl = store.lease(5, lease_id=lease.id)  # a different TTL gets a fresh lease
    assert other_ttl.id != lease.id
    lease.revoke()
    assert store.get("/l/a") is None
    lease.revoke()  # idempotent
    with pytest.raises(StoreError, match="expired"):
        lease.refresh()
    short = store.lease(1)
    store.create("/l/b", "y", lease=short)
    assert wait_for(lambda: store.get("/l/b") is None, timeout=6)  # expires by itself
    with pytest.raises(ConfigError):
        store.lease(0)


def test_watch_sees_puts_and_deletes_in_order(store) -> None:
    _, rev = store.get_prefix("/w/")
    rec = Recorder()
    watch = store.watch_prefix("/w/", rec, rev + 1, rec.error)
    try:
        store.put("/w/a", "1")
        store.put("/other", "x")  # outside the prefix
        store.put("/w/b", "2")
        store.delete("/w/a")
        assert wait_for(lambda: len(rec.events) == 3)
        assert [(e.kind, e.kv.key) for e in rec.events] == [
            ("put", "/w/a"), ("put", "/w/b"), ("delete", "/w/a")
        ]  # fmt: skip
        assert rec.events[2].kv.value == ""
    finally:
        watch.cancel()
    store.put("/w/c", "3")
    time.sleep(0.2)
    assert len(rec.events) == 3  # nothing after cancel()


def test_watch_latency_is_well_under_a_second(store) -> None:
    _, rev = store.get_prefix("/lat/")
    got = threading.Event()
    watch = store.watch_prefix("/lat/", lambda evs: got.set(), rev + 1)
    try:
        time.sleep(0.1)
        t0 = time.monotonic()
        store.put("/lat/x", "1")
        assert got.wait(1.0)
        assert time.monotonic() - t0 < 0.5
    finally:
        watch.cancel()


def test_watch_from_a_compacted_revision_reports_store_compacted(store) -> None:
    first = store.put("/c/a", "1")
    for i in range(5):
        store.put("/c/a", str(i))
    last = store.put("/c/b", "x")
    store.compact(last)
    rec = Recorder()
    store.watch_prefix("/c/", rec, first, rec.error)
    assert wait_for(lambda: rec.errors)
    assert isinstance(rec.errors[0], StoreCompacted)
    assert rec.errors[0].compact_revision == last
    assert rec.events == []


def test_watch_survives_an_etcd_restart(etcd, store) -> None:
    _, rev = store.get_prefix("/r/")
    rec = Recorder()
    watch = store.watch_prefix("/r/", rec, rev + 1, rec.error)
    try:
        store.put("/r/before", "1")
        assert wait_for(lambda: rec.keys("put") == ["/r/before"])
        etcd.stop()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.put("/r/down", "x")
        time.sleep(0.5)
        etcd.start()
        store.put("/r/after", "2")
        assert wait_for(lambda: "/r/after" in rec.keys("put"), timeout=10)
        assert rec.keys("put") == ["/r/before", "/r/after"]  # no duplicate, none lost
        assert rec.errors == []
    finally:
        watch.cancel()


def test_unreachable_etcd_is_store_unavailable() -> None:
    st = connect(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable) as err:
        st.get("/x")
    assert err.value.fix and isinstance(err.value.__cause__, Exception)
    st.close()
    with pytest.raises(ConfigError, match="invalid"):
        connect("ftp://nowhere")


def test_mirror_lists_then_watches(store) -> None:
    store.put("/m/a", "1")
    store.put("/m/b", "2")
    rec = Recorder()
    mirror = PrefixMirror(store, "/m/", rec).start()
    try:
        assert mirror.wait_synced(5)
        assert sorted(rec.keys("put")) == ["/m/a", "/m/b"]
        store.put("/m/c", "3")
        store.delete("/m/a")
        assert wait_for(lambda: rec.keys("delete") == ["/m/a"])
        assert sorted(mirror.items()) == ["/m/b", "/m/c"]
    finally:
        mirror.stop()


def test_mirror_relists_after_compaction_without_losing_events(etcd, store) -> None:
    """The mirror's consumer is blocked on one event while etcd restarts and the history
    after that event is changed and compacted: the watch resumes from a compacted revision,
    the mirror re-lists and reports exactly the difference."""
    store.put("/mc/keep", "1")
    store.put("/mc/change", "1")
    store.put("/mc/gone", "1")
    gate, blocked = threading.Event(), threading.Event()
    rec = Recorder()

    def consumer(events: list[WatchEvent]) -> None:
        rec(events)
        if any(e.kv.key == "/mc/trigger" for e in events):
            blocked.set()
            gate.wait(20)

    mirror = PrefixMirror(store, "/mc/", consumer, retry_max=0.5).start()
    try:
        assert mirror.wait_synced(5)
        assert wait_for(lambda: mirror.relists == 1)
        time.sleep(0.2)  # the watch is established
        store.put("/mc/trigger", "1")
        assert blocked.wait(5)
        lists_before = mirror.relists
        rec.events.clear()
        etcd.stop()  # the watch's connection dies under the blocked consumer
        etcd.start()
        store.put("/mc/change", "2")
        store.delete("/mc/gone")
        store.put("/mc/new", "1")
        store.compact(store.put("/unrelated", "x"))
        gate.set()
        assert wait_for(lambda: mirror.relists > lists_before, timeout=10)
        assert wait_for(lambda: sorted(mirror.items()) == ["/mc/change", "/mc/keep", "/mc/new",
                                                           "/mc/trigger"])  # fmt: skip
        assert mirror.items()["/mc/change"].value == "2"
        assert sorted(rec.keys("put")) == ["/mc/change", "/mc/new"]
        assert rec.keys("delete") == ["/mc/gone"]  # unchanged keys are not re-reported
        assert mirror.compactions == 1
    finally:
        gate.set()
        mirror.stop()


def test_mirror_retries_while_etcd_is_down(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fabric.store.sync")
    server = EtcdServer(tmp_path / "etcd")
    st = connect(server.url)
    rec = Recorder()
    mirror = PrefixMirror(st, "/d/", rec, retry_max=0.3).start()
    try:
        time.sleep(1.0)  # several retries, one warning (not one per retry)
        assert not mirror.synced and "unreachable" in (mirror.last_error or "")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        with server:
            st.put("/d/x", "1")
            assert wait_for(lambda: rec.keys("put") == ["/d/x"], timeout=10)
            assert mirror.synced
            assert "listing and watching again" in caplog.text
    finally:
        mirror.stop()
        st.close()


def test_missing_etcd_binary_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no etcd on this PATH
    with pytest.raises(ConfigError, match="etcd binary is not installed") as err:
        EtcdServer(tmp_path / "etcd").start()
    assert "etcd-server" in (err.value.fix or "")


def test_etcd_server_is_stopped_by_pid_and_restartable(tmp_path) -> None:
    server = EtcdServer(tmp_path / "etcd")
    with server:
        pid = server.pid
        st = connect(server.url)
        st.put("/keep", "1")
        server.kill()  # crash
        assert server.pid is None and not server.healthy()
        server.start()  # same data dir and ports: data survived
        assert server.pid != pid and st.get("/keep").value == "1"
        st.close()
    assert server.pid is None and not server.healthy()
    assert (tmp_path / "etcd.log").exists()
