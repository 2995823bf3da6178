"""Options of the weave backends (``backendConfig`` keys, also reachable from ``fabric up`` flags).

====================  ==============  =====================================================
key                   default         meaning
====================  ==============  =====================================================
``Peers``             ``[]``          hosts to connect to (``HOST`` or ``HOST:PORT``);
                                      ``fabric up --peers a,b`` sets it
``MeshPort``          6783            TCP port of the gossip mesh
``DataPort``          6783            UDP port of the sleeve data path
``FastdpPort``        6784            UDP port of the kernel VXLAN path (weave-fastdp)
``PasswordFile``      none            file holding the mesh password (not world-readable);
                                      ``fabric up --password-file``. Encrypts the mesh and
                                      every sleeve frame
``Bridge``            ``<net>.br``    the node bridge (weave's ``weave``)
``DNS``               true            run weaveDNS on the bridge address
``DNSDomain``         ``weave.local.`` weaveDNS domain
``DNSPort``           53              weaveDNS port
``DNSUpstream``       resolv.conf     upstream resolvers for other names (``none``: none)
``MACExpiry``         600             seconds a learned MAC stays without traffic
``HeartbeatInterval`` 1.0             seconds between data-path heartbeats per peer
====================  ==============  =====================================================

Bad values raise :class:`~fabric.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import attrs

from fabric.errors import ConfigError
from fabric.mesh.crypto import password_key

__all__ = ["WeaveOptions", "read_password_file", "psk_from_password", "MESH_PORT", "DATA_PORT",
           "FASTDP_PORT"]

MESH_PORT = 6783  # weave's control port (TCP)
DATA_PORT = 6783  # weave's sleeve port (UDP)
FASTDP_PORT = 6784  # weave's fast datapath port (UDP, VXLAN)

_KEYS = {"Type", "Peers", "MeshPort", "DataPort", "FastdpPort", "PasswordFile", "Bridge",
         "DNS", "DNSDomain", "DNSPort", "DNSUpstream", "MACExpiry",
         "HeartbeatInterval"}


def read_password_file(path: str | Path) -> bytes:
    """The password in ``path`` (trailing newline stripped); the file must not be world-readable."""
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"PasswordFile {p}: {exc.strerror}", field="PasswordFile",
                          fix="give the path of a file holding the mesh password") from exc
    if st.st_mode & stat.S_IROTH or st.st_mode & stat.S_IWOTH:
        raise ConfigError(f"PasswordFile {p} is world-readable (mode {stat.S_IMODE(st.st_mode):o})",
                          field="PasswordFile", fix=f"chmod 600 {p}")
    password = data.rstrip(b"\r\n")
    if not password:
        raise ConfigError(f"PasswordFile {p} is empty", field="PasswordFile")
    return password


def _port(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"weave option {key}: {value!r} is not a port (1-65535)", field=key)
    return value


def _flag(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"weave option {key}: {value!r} is not true/false", field=key)
    return value


def _seconds(cfg: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"weave option {key}: {value!r} is not a number of seconds in "
                          f"{low}-{high}", field=key)
    return float(value)


def _peer_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"weave option Peers: {value!r} is not a list of hosts", field="Peers",
                          fix="e.g. Peers: [198.18.0.12, 198.18.0.13] or --peers a,b")
    out = []
    for v in value:
        host, sep, port = v.strip().rpartition(":")
        if not sep:
            host, port = v.strip(), ""
        try:
            IPv4Address(host)
        except ValueError:
            if not host or any(c.isspace() for c in host):
                raise ConfigError(f"weave peer {v!r} is not a host or HOST:PORT",
                                  field="Peers") from None
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"weave peer {v!r} has a bad port", field="Peers")
        out.append(v.strip())
    return tuple(out)


@attrs.frozen
class WeaveOptions:
    peers: tuple[str, ...] = ()
    mesh_port: int = MESH_PORT
    data_port: int = DATA_PORT
    fastdp_port: int = FASTDP_PORT
    password: bytes | None = attrs.field(default=None, repr=False)
    password_file: str = ""
    bridge: str = ""
    dns: bool = True
    dns_domain: str = "weave.local."
    dns_port: int = 53
    dns_upstream: tuple[str, ...] | None = None  # None: the host's resolv.conf
    mac_expiry: float = 600.0
    heartbeat: float = 1.0

    @classmethod
    def parse(cls, cfg: Mapping[str, Any], default_bridge: str) -> WeaveOptions:
        unknown = sorted(set(cfg) - _KEYS)
        if unknown:
            raise ConfigError(f"weave backend: unknown option(s) {', '.join(unknown)}",
                              field=unknown[0], fix=f"valid options: {', '.join(sorted(_KEYS))}")
        if "Password" in cfg:  # never accepted: it would sit in process lists and configs
            raise ConfigError("weave backend: a password is read from PasswordFile only")
        pw_file = cfg.get("PasswordFile") or ""
        if not isinstance(pw_file, str):
            raise ConfigError("weave option PasswordFile must be a path", field="PasswordFile")
        domain = cfg.get("DNSDomain", "weave.local.")
        if not isinstance(domain, str) or not domain.strip("."):
            raise ConfigError(f"weave option DNSDomain: {domain!r} is not a domain",
                              field="DNSDomain")
        upstream = cfg.get("DNSUpstream")
        if upstream == "none":
            upstream = []
        elif isinstance(upstream, str):
            upstream = [u for u in upstream.split(",") if u]
        try:
            upstream = None if upstream is None else tuple(str(IPv4Address(u)) for u in upstream)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"weave option DNSUpstream: {exc}", field="DNSUpstream",
                              fix="a list of IPv4 addresses, or none") from exc
        bridge = cfg.get("Bridge") or default_bridge
        if not isinstance(bridge, str) or not 0 < len(bridge) <= 15 or "/" in bridge:
            raise ConfigError(f"weave option Bridge: {bridge!r} is not a device name",
                              field="Bridge")
        opts = cls(
            peers=_peer_list(cfg.get("Peers", [])),
            mesh_port=_port(cfg, "MeshPort", MESH_PORT),
            data_port=_port(cfg, "DataPort", DATA_PORT),
            fastdp_port=_port(cfg, "FastdpPort", FASTDP_PORT),
            password=read_password_file(pw_file) if pw_file else None,
            password_file=pw_file,
            bridge=bridge,
            dns=_flag(cfg, "DNS", True),
            dns_domain=domain.rstrip(".").lower() + ".",
            dns_port=_port(cfg, "DNSPort", 53),
            dns_upstream=upstream,
            mac_expiry=_seconds(cfg, "MACExpiry", 600.0, 1, 86400),
            heartbeat=_seconds(cfg, "HeartbeatInterval", 1.0, 0.1, 60),
        )
        if opts.fastdp_port == opts.data_port:
            raise ConfigError(f"FastdpPort and DataPort are both {opts.data_port}",
                              field="FastdpPort", fix="weave uses 6784 for fastdp, 6783 sleeve")
        return opts

    def targets(self) -> list[str]:
        """Mesh dial targets: ``HOST:PORT`` with the mesh port where none is given."""
        return [p if ":" in p else f"{p}:{self.mesh_port}" for p in self.peers]


def psk_from_password(password: bytes | None) -> bytes:
    """The sleeve's pre-shared key: only peers that know the password derive it."""
    if not password:
        return b""
    return hashlib.sha256(b"netfabric-sleeve-psk-v1" + password_key(password)).digest()
