"""The node agent (`fabric up`): networks, control socket, signals, teardown."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fabric import __version__
from fabric.agent import notify
from fabric.agent.cni_ops import CNI_HANDLERS
from fabric.agent.config import AgentConfig
from fabric.agent.network import Network, atomic_write_json, network_context
from fabric.agent.server import ControlServer
from fabric.api import Node
from fabric.errors import (
    AgentUnavailable,
    ConfigError,
    FabricError,
    KernelFeatureMissing,
    NotFound,
    PluginError,
    PolicyError,
)
from fabric.net.links import underlay_of

__all__ = ["Agent", "offline_teardown"]

log = logging.getLogger("fabric.agent")
_FATAL = (ConfigError, PluginError, KernelFeatureMissing, PolicyError)


def _node(config: AgentConfig) -> Node:
    iface, addr, mtu = underlay_of(config.iface)
    return Node(config.node_name, config.public_ip or addr.ip, iface, mtu)


def _store(config: AgentConfig):
    if not config.etcd:
        return None
    from fabric.store import connect

    return connect(config.etcd, tls=config.etcd_tls)


def _health(store, config: AgentConfig):
    if store is None:
        return None
    from fabric.store.health import PROBE_KEY, HealthMonitor

    return HealthMonitor(lambda: store.get(PROBE_KEY), f"etcd at {config.etcd}")


def _metrics(agent: Agent):
    if not agent.config.metrics_addr:
        return None
    from fabric.agent.metrics import AgentMetrics

    return AgentMetrics(agent.status)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node = _node(config)
        self.store = _store(config)
        self.health = _health(self.store, config)  # datastore outages visible in status
        self.networks: dict[str, Network] = {}
        for spec in config.networks:
            ctx = network_context(spec, self.node, config.state_dir, self.store)
            self.networks[spec.name] = Network(ctx)
        self.server = ControlServer(config.state_dir / "agent.sock", self.dispatch)
        self.started = time.time()
        self._stop = threading.Event()
        self._teardown = False
        self._fatal: FabricError | None = None
        self.metrics = _metrics(self)

    def request_stop(self, teardown: bool = False) -> None:
        self._teardown = teardown
        self._stop.set()

    # -- running --
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (graceful) or a `stop` request; returns an exit code."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config.state_dir / "agent.json", self.config.to_json())
        if self.metrics is not None and self.config.metrics_addr:  # tests attach unserved
            # first: a busy port fails the start before the control socket is taken
            log.info("metrics on http://%s:%d/metrics", *self.metrics.serve(
                self.config.metrics_addr))
        self.server.start()
        if self.health is not None:
            self.health.start()
        (self.config.state_dir / "agent.pid").write_text(f"{os.getpid()}\n")
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        threads = [
            threading.Thread(target=self._start_network, args=(n,), daemon=True,
                             name=f"start-{n.spec.name}")
            for n in self.networks.values()
        ]
        for t in threads:
            t.start()
        log.info("agent %s serving %s on %s (%s)", __version__,
                 ", ".join(self.networks), self.server.path, self.node.public_ip)
        self._notify_when_ready(threads)
        notify.stopping("tearing down" if self._teardown else "stopping")
        self.server.close()
        for net in reversed(list(self.networks.values())):
            if self._teardown:
                net.teardown()
            else:
                net.stop()
        if self.health is not None:
            self.health.stop()
        if self.store is not None:
            try:
                self.store.close()
            except Exception:  # closing a broken store must not hide the exit reason
                log.debug("closing store", exc_info=True)
        if self._teardown:
            for f in ("agent.json", "agent.pid"):
                (self.config.state_dir / f).unlink(missing_ok=True)
        else:
            (self.config.state_dir / "agent.pid").unlink(missing_ok=True)
        if self.metrics is not None:
            self.metrics.close()
        if self._fatal is not None:
            log.error("%s", self._fatal)
            return 1
        log.info("agent stopped%s", " and removed its state" if self._teardown else "")
        return 0

    def _notify_when_ready(self, threads: list[threading.Thread]) -> None:
        """Wait for the stop; tell systemd READY=1 once every network has started."""
        told = False
        while not self._stop.wait(0.5 if told else 0.1):
            if not told and not any(t.is_alive() for t in threads):
                told = True
                self._write_subnet_file()
                notify.ready(f"serving {', '.join(self.networks)}")

    def _write_subnet_file(self) -> None:
        """flannel's --subnet-file: the first network's lease, for flannel's CNI plugin."""
        if not self.config.subnet_file:
            return
        from fabric.ipam.subnet_env import write_subnet_env

        net = next(iter(self.networks.values()))
        chunks = net.ipam.chunks()
        if not chunks:
            return
        try:
            write_subnet_env(self.config.subnet_file, network=net.spec.cidr, subnet=chunks[0],
                             mtu=net.mtu, ipmasq=net.spec.ipmasq)
        except (FabricError, OSError) as exc:  # the network works; only readers miss it
            log.error("cannot write --subnet-file %s: %s", self.config.subnet_file, exc)

    def _start_network(self, net: Network) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                net.start()
                log.info("network %s ready: %s chunks %s", net.spec.name, net.spec.backend,
                         ", ".join(str(c) for c in net.ipam.chunks()))
                return
            except _FATAL as exc:
                self._fatal = exc if isinstance(exc, KernelFeatureMissing) else type(exc)(
                    f"network {net.spec.name}: {exc.message}", fix=exc.fix, field=exc.field)
                self._stop.set()
                return
            except Exception as exc:  # transient: etcd down, races; retry with backoff
                log.warning("network %s not started yet (%s); retrying in %.1fs",
                            net.spec.name, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10)

    # -- control requests --
    def network(self, req: dict[str, Any]) -> Network:
        """The network a request names (``network``), or the only one served."""
        name = req.get("network") or ""
        if not name:
            if len(self.networks) == 1:
                return next(iter(self.networks.values()))
            raise ConfigError(
                "this agent serves several networks; say which",
                fix=f"set \"network\" in the CNI config to one of {', '.join(self.networks)}",
            )
        if name not in self.networks:
            raise NotFound(f"network {name!r} is not served by this agent",
                           fix=f"served: {', '.join(self.networks)}", field="network")
        return self.networks[name]

    _network = network  # older name, kept for callers outside the agent package

    def _op_status(self, req: dict[str, Any]) -> Any:
        return self.status()

    def _op_stop(self, req: dict[str, Any]) -> None:
        self._teardown = bool(req.get("teardown"))
        self._stop.set()

    def _op_backend(self, req: dict[str, Any]) -> Any:
        """A backend's own operations (weave connect, dns add...): ``backend.NAME``."""
        return self.network(req).backend_op(req["op"][len("backend."):], req)

    def _op_policy(self, req: dict[str, Any]) -> Any:
        from fabric.policy.ops import handle_policy_op

        return handle_policy_op(self.network(req), req["op"], req)

    def dispatch(self, req: dict[str, Any]) -> Any:
        """One control request: a handler table, as `fabric-cni`'s ``_HANDLERS``."""
        op = req["op"]
        handler = _HANDLERS.get(op) or _PREFIX_HANDLERS.get(op.split(".", 1)[0] + ".")
        if handler is None:
            raise ConfigError(f"unknown op {op!r}",
                              fix=f"ops: {', '.join(sorted(_HANDLERS))}, backend.*, policy.*")
        if op not in _ALWAYS and self._stop.is_set():
            raise AgentUnavailable("the agent is stopping", fix="retry when it is back")
        if self.metrics is None or not op.startswith("cni."):
            return handler(self, req)
        t0, ok = time.monotonic(), False
        try:
            result = handler(self, req)
            ok = True
            return result
        finally:
            self.metrics.observe_cni(str(req.get("network") or ""), op[4:], ok,
                                     time.monotonic() - t0)

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 1),
            "node": {"name": self.node.name, "public_ip": str(self.node.public_ip),
                     "iface": self.node.iface, "mtu": self.node.mtu},
            "etcd": self.config.etcd,
            "datastore": self.health.status() if self.health is not None else None,
            "networks": [n.status() for n in self.networks.values()],
        }


_HANDLERS: dict[str, Callable[[Agent, dict[str, Any]], Any]] = {
    "status": Agent._op_status, "stop": Agent._op_stop, **CNI_HANDLERS}
_PREFIX_HANDLERS: dict[str, Callable[[Agent, dict[str, Any]], Any]] = {
    "backend.": Agent._op_backend, "policy.": Agent._op_policy}
_ALWAYS = frozenset({"status", "stop"})  # answered also while the agent stops


def offline_teardown(state_dir: Path) -> list[str]:
    """`fabric down` when no agent answers: rebuild networks from agent.json and remove them."""
    import json

    path = state_dir / "agent.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotFound(f"no agent state in {state_dir}", fix="nothing to take down") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is corrupt: {exc}") from exc
    config = AgentConfig.from_json(data)
    node = _node(config)
    try:
        store = _store(config)
    except FabricError as exc:
        log.warning("etcd unavailable, leases will expire by themselves: %s", exc)
        store = None
    done = []
    for spec in reversed(config.networks):
        net = Network(network_context(spec, node, config.state_dir, store))
        net.teardown()
        done.append(spec.name)
    path.unlink(missing_ok=True)
    (state_dir / "agent.pid").unlink(missing_ok=True)
    return done
