"""etcd endpoint lists and TLS options: parsing and the errors a user sees (no etcd needed;
the functional tests in tests/functional/test_etcd_tls.py use a real TLS etcd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.errors import ConfigError
from fabric.store import TLSFiles, connect
from fabric.store.etcd import parse_endpoints


def test_endpoint_lists_are_normalised_in_order() -> None:
    assert parse_endpoints("http://b:2379, a:2380,,http://b:2379") == [
        "http://b:2379", "http://a:2380"]  # order kept, duplicates dropped, default scheme
    assert parse_endpoints(["10.0.0.1", "https://10.0.0.2"], tls=True) == [
        "https://10.0.0.1:2379", "https://10.0.0.2:2379"]


@pytest.mark.parametrize("bad", ["", " , ", "ftp://x:1", "http://"])
def test_bad_endpoints_are_refused_with_a_fix(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_endpoints(bad)
    assert exc.value.fix and exc.value.field == "--etcd-endpoints"


def test_tls_options(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        TLSFiles(str(ca), str(ca), "")
    with pytest.raises(ConfigError, match="not a readable file") as exc:
        connect("https://127.0.0.1:2379", TLSFiles(str(tmp_path / "missing.pem")))
    assert exc.value.field == "--etcd-cafile"
    with pytest.raises(ConfigError, match="every etcd endpoint is http"):
        connect("http://127.0.0.1:2379", TLSFiles(str(ca)))
    store = connect("127.0.0.1:2379,127.0.0.2:2379", TLSFiles(str(ca), str(ca), str(ca)))
    assert store.url == "https://127.0.0.1:2379"  # no I/O yet: the first endpoint
    assert store.tls_kwargs() == {"verify": str(ca), "cert": (str(ca), str(ca))}
    store.failover("https://127.0.0.1:2379")
    assert store.url == "https://127.0.0.2:2379"
    store.failover("https://127.0.0.1:2379")  # a stale report does not move it again
    assert store.url == "https://127.0.0.2:2379"
    store.close()
    assert not TLSFiles() and TLSFiles(str(ca))
