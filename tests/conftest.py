"""Fixtures shared by every test tier.

``etcd``: a private, real etcd (Debian's binary) on 127.0.0.1 with free ports and its
own data directory, started per test and stopped by pid afterwards; tests may
``stop()``/``start()``/``kill()`` it. Skips the test when etcd is not installed.
``store``: an :class:`~fabric.store.etcd.EtcdStore` connected to it, closed afterwards.
"""

from __future__ import annotations

import pytest

from fabric_testplugins.etcd import EtcdServer
from tests.util import private_etcd

etcd = pytest.fixture(private_etcd, name="etcd")


@pytest.fixture
def store(etcd: EtcdServer):
    from fabric.store import connect

    st = connect(etcd.url)
    try:
        yield st
    finally:
        st.close()
