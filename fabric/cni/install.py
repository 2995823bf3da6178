"""`fabric cni install` / `uninstall`: put the plugin and a conflist where runtimes look.

As flannel's install-cni does, every file is written to a temporary name in its target
directory and renamed into place, so a runtime scanning ``/etc/cni/net.d`` or executing
from ``/opt/cni/bin`` never sees half a file.

The plugin is a self-contained zipapp (``python -m zipapp`` layout): `fabric-cni` imports
only the standard library and five of our modules, so the archive runs with the host's
``python3`` (>= 3.9) even when the agent lives in a container image or a venv the host
cannot see (the DaemonSet case). The zip comment marks the file as ours; uninstall removes
only files carrying that mark (plugin) or our plugin type (conflist).

The conflist says ``cniVersion: 1.0.0``: the newest version that Debian 12's libcni 1.1
(containerd, cri-o, podman of that release) reads; the plugin also speaks 1.1.0 and 0.4.0.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import attrs

import fabric
from fabric.errors import ConfigError
from fabric.fsutil import atomic_write

__all__ = [
    "CONF_VERSION",
    "DEFAULT_BIN_DIR",
    "DEFAULT_CONF_DIR",
    "DEFAULT_CONF_NAME",
    "PLUGIN_NAME",
    "FALLBACK_NAME",
    "Installed",
    "build_plugin",
    "conflist",
    "install",
    "uninstall",
    "register",
]

CONF_VERSION = "1.0.0"
DEFAULT_BIN_DIR = Path("/opt/cni/bin")
DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_CONF_NAME = "10-netfabric.conflist"
PLUGIN_NAME = "fabric-cni"
FALLBACK_NAME = "fabric-cni-py"  # the Python plugin next to the native forwarder
DEFAULT_SOCKET = "/run/netfabric/agent.sock"
DEFAULT_PYTHON = "/usr/bin/env python3"
_MARK = b"netfabric fabric-cni"
# what `fabric-cni` imports of ours (checked by a test against sys.modules)
_MODULES = ("__init__.py", "errors.py", "control.py",
            "cni/__init__.py", "cni/errors.py", "cni/main.py", "cni/result.py", "cni/spec.py")
_MAIN = "import sys\nfrom fabric.cni.main import main\nsys.exit(main())\n"


@attrs.frozen
class Installed:
    plugin: Path
    conflist: Path


def build_plugin(python: str = DEFAULT_PYTHON) -> bytes:
    """The plugin executable: ``#!python`` line + a zip of `fabric-cni`'s modules."""
    if not python or "\n" in python:
        raise ConfigError(f"interpreter {python!r} is invalid", fix="e.g. /usr/bin/python3")
    root = Path(fabric.__file__).parent
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__main__.py", _MAIN)
        for rel in _MODULES:
            zf.write(root / rel, f"fabric/{rel}")
            zf.writestr(f"fabric/{rel}c", _pyc(root / rel, f"fabric/{rel}"))
        zf.comment = _MARK
    return f"#!{python}\n".encode() + buf.getvalue()


def _pyc(path: Path, name: str) -> bytes:
    """Byte code for the zip: zipimport cannot cache compiled modules, so without it every
    plugin start compiles them (about 20 ms of CPU per ADD, measured: docs/benchmarks.md).
    Unchecked hash-based (PEP 552): valid whatever the mtime; an interpreter of another
    version ignores it (magic number) and compiles the source next to it."""
    import importlib.util
    import marshal

    source = path.read_bytes()
    code = compile(source, name, "exec", dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def conflist(name: str = "netfabric", network: str = "",
             agent_socket: str = "") -> dict[str, Any]:
    """The network config list runtimes load (libcni adds name/cniVersion to each plugin)."""
    plugin: dict[str, Any] = {"type": PLUGIN_NAME}
    if network:
        plugin["network"] = network
    if agent_socket:
        plugin["agentSocket"] = agent_socket
    return {"cniVersion": CONF_VERSION, "name": name, "plugins": [plugin]}


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    try:
        atomic_write(path, data, mode=mode)  # a new inode: also replaces a running plugin safely
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}",
                          fix="run as root or pick writable --bin-dir/--conf-dir") from exc


def _check_name(value: str, what: str) -> None:
    if not value or "/" in value or value.startswith("."):
        raise ConfigError(f"{what} {value!r} is invalid", fix="a plain file name, no '/'")


def install(bin_dir: Path = DEFAULT_BIN_DIR, conf_dir: Path = DEFAULT_CONF_DIR, *,
            network: str = "", name: str = "netfabric", agent_socket: str = "",
            conf_name: str = DEFAULT_CONF_NAME, python: str = DEFAULT_PYTHON,
            native: bool = False) -> Installed:
    """Write the plugin, then the conflist (a runtime never finds a config before its plugin).

    ``native``: `fabric-cni` is the compiled forwarder (fabric/cni/forward.c: ~1 ms of CPU
    per call instead of a Python start; it needs a C compiler here), and the Python plugin,
    its fallback, goes next to it as ``fabric-cni-py``. ``bin_dir`` must then be the path
    the host's runtime sees (it is compiled in)."""
    _check_name(conf_name, "conflist name")
    if not conf_name.endswith((".conflist", ".conf", ".json")):
        raise ConfigError(f"conflist name {conf_name!r} would be ignored by runtimes",
                          fix="end it in .conflist")
    plugin = Path(bin_dir) / PLUGIN_NAME
    conf = Path(conf_dir) / conf_name
    _refuse_foreign(plugin, conf)
    py_plugin = Path(bin_dir) / FALLBACK_NAME
    if native:
        from fabric.cni.native import build_native

        if py_plugin.exists() and not _ours_plugin(py_plugin):
            raise ConfigError(f"{py_plugin} exists and was not written by `fabric cni install`",
                              fix="remove it by hand, or choose another --bin-dir")
        _atomic_write(py_plugin, build_plugin(python), 0o755)
        build_native(plugin, socket=agent_socket or DEFAULT_SOCKET,
                     fallback=str(py_plugin.absolute()))
    else:
        _atomic_write(plugin, build_plugin(python), 0o755)
    text = json.dumps(conflist(name, network, agent_socket), indent=2) + "\n"
    _atomic_write(conf, text.encode(), 0o644)
    return Installed(plugin, conf)


def _ours_plugin(path: Path) -> bool:
    from fabric.cni.native import is_native

    if is_native(path):
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.comment == _MARK
    except (OSError, zipfile.BadZipFile):
        return False


def _ours_conf(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    plugins = data.get("plugins") if isinstance(data, dict) else None
    return isinstance(plugins, list) and any(
        isinstance(p, dict) and p.get("type") == PLUGIN_NAME for p in plugins)


def _refuse_foreign(plugin: Path, conf: Path) -> None:
    """Never overwrite a file someone else put there (e.g. a plugin built by hand)."""
    for path, ours in ((plugin, _ours_plugin), (conf, _ours_conf)):
        if path.exists() and not ours(path):
            raise ConfigError(f"{path} exists and was not written by `fabric cni install`",
                              fix="remove it by hand, or choose another --conf-name/--bin-dir")


def uninstall(bin_dir: Path = DEFAULT_BIN_DIR, conf_dir: Path = DEFAULT_CONF_DIR, *,
              conf_name: str = DEFAULT_CONF_NAME) -> list[Path]:
    """Remove the conflist first (runtimes stop using it), then the plugin; returns what went."""
    _check_name(conf_name, "conflist name")
    removed = []
    for path, ours in ((Path(conf_dir) / conf_name, _ours_conf),
                       (Path(bin_dir) / PLUGIN_NAME, _ours_plugin),
                       (Path(bin_dir) / FALLBACK_NAME, _ours_plugin)):
        if not path.exists():
            continue
        if not ours(path):
            raise ConfigError(f"{path} was not written by `fabric cni install`; left alone",
                              fix="remove it by hand if it is really unwanted")
        path.unlink()
        removed.append(path)
    return removed


# -- command line --
def register(sub: Any) -> None:
    cni = sub.add_parser("cni", help="install / uninstall the CNI plugin and its conflist")
    cni_sub = cni.add_subparsers(dest="cni", metavar="ACTION", parser_class=type(cni))
    cni_sub.required = True
    for action, fn in (("install", _cmd_install), ("uninstall", _cmd_uninstall)):
        p = cni_sub.add_parser(action, help=f"{action} fabric-cni and {DEFAULT_CONF_NAME}")
        p.add_argument("--bin-dir", type=Path, default=DEFAULT_BIN_DIR)
        p.add_argument("--conf-dir", type=Path, default=DEFAULT_CONF_DIR)
        p.add_argument("--conf-name", default=DEFAULT_CONF_NAME)
        if action == "install":
            p.add_argument("--network", default="", help="agent network to attach to "
                                                         "(default: the agent's only one)")
            p.add_argument("--name", default="netfabric", help="CNI network name")
            p.add_argument("--agent-socket", default="",
                           help="agent socket (default /run/netfabric/agent.sock)")
            p.add_argument("--python", default=DEFAULT_PYTHON,
                           help="interpreter line of the plugin (host's python3 >= 3.9)")
            p.add_argument("--native", action="store_true",
                           help="compile the native forwarder as fabric-cni (needs cc; the "
                                "Python plugin becomes its fallback, fabric-cni-py)")
        p.set_defaults(func=fn)


def _cmd_install(args: argparse.Namespace) -> int:
    done = install(args.bin_dir, args.conf_dir, network=args.network, name=args.name,
                   agent_socket=args.agent_socket, conf_name=args.conf_name,
                   python=args.python, native=args.native)
    print(f"installed {done.plugin} and {done.conflist}")
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    removed = uninstall(args.bin_dir, args.conf_dir, conf_name=args.conf_name)
    print(f"removed {', '.join(map(str, removed)) or 'nothing (not installed)'}")
    return 0
