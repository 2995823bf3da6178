"""Test-only plugins and fixtures for netfabric (distribution ``netfabric-testplugins``).

``fake``: an in-memory backend and IPAM (no kernel, no datastore) that unit tests of
the core and some functional tests (agents started as subprocesses) use.
``etcd``: a private, real etcd server for tests. Never installed by a plain
``pip install netfabric``: `fabric plugins` there lists only what works.
"""
