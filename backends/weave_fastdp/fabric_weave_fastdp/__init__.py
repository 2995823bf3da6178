"""netfabric weave-fastdp backend (entry point ``weave-fastdp``)."""

from fabric_weave_fastdp.backend import WeaveFastdpBackend

__all__ = ["WeaveFastdpBackend"]
