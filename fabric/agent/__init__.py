"""netfabric."""
