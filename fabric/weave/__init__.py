"""Shared weave control plane: mesh glue, bridge, sleeve, weaveDNS."""
