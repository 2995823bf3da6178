"""vxlan backend: flannel's kernel VXLAN design (code in :mod:`fabric_vxlan.backend`)."""

from fabric_vxlan.backend import VXLAN_OVERHEAD, VxlanBackend

__all__ = ["VxlanBackend", "VXLAN_OVERHEAD"]
