"""Plugin discovery and loading for the three entry-point groups.

Loading goes through stevedore's ``DriverManager`` with every callback passed
explicitly; whatever goes wrong becomes one :class:`~fabric.errors.PluginError`
naming the plugin, the reason and the fix.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from typing import Any

import attrs
from stevedore import DriverManager, ExtensionManager
from stevedore.exception import MultipleMatches, NoMatches

from fabric.errors import PluginError

logging.getLogger("stevedore").setLevel(logging.ERROR)  # our PluginError says it better

__all__ = ["GROUPS", "PluginInfo", "list_plugins", "load_plugin", "known_names"]

GROUPS = {"backend": "fabric.backends", "ipam": "fabric.ipam", "policy": "fabric.policy"}
_INTERFACES = {"backend": "Backend", "ipam": "IPAM", "policy": "PolicyEngine"}


@attrs.frozen
class PluginInfo:
    """One installed entry point: kind, name, ``module:attr`` target, its distribution."""

    kind: str  # backend | ipam | policy
    name: str
    target: str  # module:attribute
    distribution: str
    version: str


def list_plugins(kind: str | None = None) -> list[PluginInfo]:
    """Every installed plugin (not imported), sorted by kind and name."""
    kinds = [kind] if kind else list(GROUPS)
    for k in kinds:
        if k not in GROUPS:
            raise PluginError(f"unknown plugin kind {k!r}", fix=f"use one of {', '.join(GROUPS)}")
    out: dict[tuple[str, str, str], PluginInfo] = {}
    for dist in md.distributions():
        dname = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            for k in kinds:
                if ep.group == GROUPS[k]:
                    info = PluginInfo(k, ep.name, ep.value, dname, dist.version)
                    out[(k, ep.name, dname)] = info
    return sorted(out.values(), key=lambda p: (p.kind, p.name, p.distribution))


def known_names(kind: str) -> list[str]:
    """Names of the installed plugins of one kind, sorted (for error messages, `fabric plugins`)."""
    return sorted({p.name for p in list_plugins(kind)})


def _unknown(kind: str, name: str) -> PluginError:
    names = known_names(kind)
    known = ", ".join(names) if names else "none installed"
    return PluginError(
        f"unknown {kind} {name!r}; known {kind}s: {known}",
        fix=f"pick one of those or pip install the package that provides {kind} {name!r}",
    )


def load_plugin(kind: str, name: str) -> type[Any]:
    """Import and return the plugin class ``name`` of ``kind``; checks its base class."""
    if kind not in GROUPS:
        raise PluginError(f"unknown plugin kind {kind!r}", fix=f"use one of {', '.join(GROUPS)}")
    failures: list[tuple[str, BaseException]] = []
    missing: list[str] = []

    def on_failure(_mgr: Any, ep: md.EntryPoint, exc: BaseException) -> None:
        failures.append((ep.value, exc))

    def on_missing(names: Any) -> None:
        missing.extend(names)

    def on_conflict(namespace: str, ep_name: str, extensions: list[Any]) -> Any:
        where = sorted({p.distribution for p in list_plugins(kind) if p.name == ep_name})
        raise PluginError(
            f"two installed plugins are both {kind} {ep_name!r}: {', '.join(where) or '?'}",
            fix="pip uninstall one of those distributions",
        )

    # stevedore keeps a per-process entry-point list; re-read so that what we load
    # always matches what list_plugins() shows (plugins installed since start).
    ExtensionManager.ENTRY_POINT_CACHE.pop(GROUPS[kind], None)
    try:
        mgr = DriverManager(
            GROUPS[kind],
            name,
            on_load_failure_callback=on_failure,
            on_missing_entrypoints_callback=on_missing,
            conflict_resolver=on_conflict,
        )
    except NoMatches:
        if failures:
            target, exc = failures[0]
            dist = next((p for p in list_plugins(kind) if p.name == name), None)
            where = f" from {dist.distribution} {dist.version}" if dist else ""
            raise PluginError(
                f"{kind} {name!r}{where} failed to import ({target}): "
                f"{type(exc).__name__}: {exc}",
                fix=f"reinstall the package providing {kind} {name!r} and its dependencies",
            ) from None
        raise _unknown(kind, name) from None
    except MultipleMatches as exc:  # pragma: no cover - resolver raises first
        raise PluginError(str(exc), fix="pip uninstall one of the duplicates") from None
    plugin = mgr.driver
    from fabric import api  # late: api imports attrs only, but keep CLI start light

    base = getattr(api, _INTERFACES[kind])
    if not (isinstance(plugin, type) and issubclass(plugin, base)):
        raise PluginError(
            f"{kind} {name!r} ({mgr.extensions[0].entry_point.value}) is not a "
            f"fabric.api.{_INTERFACES[kind]} subclass",
            fix="fix the plugin's entry point to name its plugin class",
        )
    return plugin
