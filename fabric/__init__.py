"""netfabric: a pluggable multi-backend container network fabric."""

__version__ = "0.1.0"
