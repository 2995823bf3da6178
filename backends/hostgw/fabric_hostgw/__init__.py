"""host-gw backend (code in :mod:`fabric_hostgw.backend`)."""

from fabric_hostgw.backend import HostGwBackend

__all__ = ["HostGwBackend"]
