"""flannel-udp backend: flannel's udp design on netfabric's userspace engine (code in
:mod:`fabric_flannel_udp.backend`)."""

from fabric_flannel_udp.backend import DEFAULT_PORT, UDP_OVERHEAD, FlannelUdpBackend

__all__ = ["FlannelUdpBackend", "UDP_OVERHEAD", "DEFAULT_PORT"]
