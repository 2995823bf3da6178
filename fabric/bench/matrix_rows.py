"""Which rows ``fabric bench matrix`` measures: every installed backend and its variants,
the underlay, and the reference rows; and which reference each backend row is compared to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = ["RowSpec", "select_rows", "VARIANTS", "REFERENCE_OF", "UNDERLAY", "C_REF"]

UNDERLAY = "underlay"
C_REF = "c-udp"
KERNEL_ROUTED, KERNEL_VXLAN = "kernel-routed", "kernel-vxlan"
PASSWORD = "{password_file}"  # replaced by a file the bench writes

# variant name -> backend options; the first is the backend's default
VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "hostgw": [("default", {}), ("fastpath", {"FastPath": True})],
    "vxlan": [("default", {}), ("fastpath", {"FastPath": True})],
    "calico-bgp": [("native", {}), ("vxlan", {"VXLANMode": "Always"}),
                   ("fastpath", {"FastPath": True})],
    "flannel-udp": [("default", {})],
    "weave-sleeve": [("default", {}), ("password", {"PasswordFile": PASSWORD})],
    "weave-fastdp": [("default", {})],
}
# (backend, variant) -> the reference row that is the same design without netfabric
REFERENCE_OF: dict[tuple[str, str], str] = {
    ("hostgw", "default"): KERNEL_ROUTED, ("hostgw", "fastpath"): KERNEL_ROUTED,
    ("calico-bgp", "native"): KERNEL_ROUTED, ("calico-bgp", "fastpath"): KERNEL_ROUTED,
    ("calico-bgp", "vxlan"): KERNEL_VXLAN,
    ("vxlan", "default"): KERNEL_VXLAN, ("vxlan", "fastpath"): KERNEL_VXLAN,
    ("weave-fastdp", "default"): KERNEL_VXLAN,  # the kernel's vxlan device under a bridge
    ("flannel-udp", "default"): C_REF, ("weave-sleeve", "default"): C_REF,
    ("weave-sleeve", "password"): C_REF,
}
_TEST_DISTRIBUTIONS = {"netfabric-testplugins"}


@attrs.frozen
class RowSpec:
    """One row: ``kind`` is backend, underlay or reference."""

    backend: str
    variant: str = "default"
    kind: str = "backend"
    opts: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    reference: str | None = None  # key of the reference row
    error: str = ""  # set when the row cannot be measured at all (unknown backend)

    @property
    def key(self) -> str:
        return self.backend if self.kind != "backend" else f"{self.backend}/{self.variant}"


def installed_backends() -> list[str]:
    """Installed backend names, one per implementation (aliases such as host-gw dropped),
    test-only plugins left out."""
    from fabric.plugins import list_plugins

    seen: dict[str, str] = {}
    for p in list_plugins("backend"):
        if p.distribution in _TEST_DISTRIBUTIONS:
            continue
        if p.target not in seen or p.name in VARIANTS:  # prefer the name VARIANTS uses
            seen[p.target] = p.name
    return sorted(seen.values())


def _userspace(backend: str) -> bool:
    from fabric.plugins import load_plugin

    return bool(load_plugin("backend", backend).capabilities.userspace)


def select_rows(backends: Sequence[str] | str = "all") -> list[RowSpec]:
    """Backend rows (variants included) plus the underlay and reference rows. An unknown
    name gives a row carrying the error, so the rest is still measured."""
    installed = installed_backends()
    wanted = installed if backends == "all" else list(backends)
    rows: list[RowSpec] = [RowSpec(UNDERLAY, "", UNDERLAY),
                           RowSpec(KERNEL_ROUTED, "", "reference"),
                           RowSpec(KERNEL_VXLAN, "", "reference"),
                           RowSpec(C_REF, "", "reference")]
    from fabric.plugins import known_names

    known = known_names("backend")
    for b in wanted:
        if b not in known:
            rows.append(RowSpec(b, "default", error=f"unknown backend {b!r} (installed: "
                                                    f"{', '.join(installed)})"))
            continue
        for variant, opts in VARIANTS.get(b, [("default", {})]):
            ref = REFERENCE_OF.get((b, variant)) or (C_REF if _userspace(b) else KERNEL_ROUTED)
            rows.append(RowSpec(b, variant, opts=opts, reference=ref))
    return rows
