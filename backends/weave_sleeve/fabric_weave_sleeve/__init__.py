"""netfabric weave-sleeve backend (entry point ``weave-sleeve``)."""

from fabric_weave_sleeve.backend import WeaveSleeveBackend

__all__ = ["WeaveSleeveBackend"]
