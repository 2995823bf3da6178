"""Shared weave control plane: mesh glue, bridge, sleeve, weaveDNS (public, for backends).

``WeaveBackend`` is the base of the weave-sleeve and weave-fastdp backends; ``Sleeve`` is
the user-space overlay both use; ``WeaveControl`` runs the gossip mesh and hands out
``MeshView`` snapshots; ``WeaveOptions`` parses the backends' options.
"""

from fabric.weave.backend import EXPOSE_HANDLE, WeaveBackend
from fabric.weave.bridge import WeaveBridge, stable_mac
from fabric.weave.control import MeshView, WeaveControl
from fabric.weave.options import WeaveOptions, psk_from_password, read_password_file
from fabric.weave.sleeve import Sleeve, sleeve_config

__all__ = [
    "EXPOSE_HANDLE",
    "MeshView",
    "Sleeve",
    "WeaveBackend",
    "WeaveBridge",
    "WeaveControl",
    "WeaveOptions",
    "psk_from_password",
    "read_password_file",
    "sleeve_config",
    "stable_mac",
]
