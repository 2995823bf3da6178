"""macvlan backend, an example third-party netfabric backend (code in
:mod:`fabric_example_macvlan.backend`)."""

from fabric_example_macvlan.backend import MacvlanBackend

__all__ = ["MacvlanBackend"]
__version__ = "0.1.0"
