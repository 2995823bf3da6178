"""netfabric's public plugin API.

Three seams, each loaded from an entry-point group (see ``fabric.plugins``):

``fabric.backends`` -> :class:`Backend`
    Programs the data path of one network on one node: node devices, routes to
    peers, the host side of each workload's interface.
``fabric.ipam`` -> :class:`IPAM`
    Cluster level: which chunks of the network (a flannel lease, Calico blocks,
    weave ring ranges) this node owns, and who the peers are. Node level:
    one address per workload handle, idempotent and persisted.
``fabric.policy`` -> :class:`PolicyEngine`
    Applies NetworkPolicy-like rules to workload endpoints, independent of the backend.

Every plugin class is instantiated **once per network per agent** with a
:class:`NetworkContext`. The agent drives them in this order::

    backend = Backend(ctx); ipam = IPAM(ctx); policy = PolicyEngine(ctx)
    data = backend.prepare()               # create node devices whose identity is published
    chunks = ipam.start(data)              # acquire / reuse this node's chunks (blocks)
    backend.start(chunks)                  # program local routes for the chunks
    policy.start()
    ipam.subscribe(backend.peers_changed, backend.chunks_changed)
    ... attach / detach / check as workloads come and go ...
    policy.stop(); ipam.stop(); backend.stop()          # graceful: pods keep working
    # or, on `fabric down`, teardown() in reverse order: everything removed

Threads. The agent's main thread runs construction, the start order above (retried with
backoff until it succeeds) and stop/teardown. CNI requests and ``status`` arrive on the
control socket's threads: per network, attach/detach/check/allocate/release and the policy
endpoint calls are serialised by the network's lock, ``status`` is not (it may run at any
moment, also during start). IPAM events (``peers_changed``, ``chunks_changed``) come from
the IPAM's own thread (an etcd watch, the gossip mesh's loop) concurrently with everything.

Errors. Every method raises :mod:`fabric.errors` types, never third-party exceptions, with
a ``fix``. During start, :class:`~fabric.errors.ConfigError`,
:class:`~fabric.errors.PluginError`, :class:`~fabric.errors.KernelFeatureMissing` and
:class:`~fabric.errors.PolicyError` are fatal (the agent exits saying so); anything else is
taken as transient and the start is retried, so ``prepare``/``start`` must be safe to call
again. A failing CNI call becomes the CNI error code of its type. Failures of event
callbacks, ``status``, ``stop`` and ``teardown`` are logged with the plugin's name and never
stop the agent (``teardown`` goes on with the other plugins).

Blocking. Methods may block on the kernel or the datastore but never forever; event
callbacks must be quick (they hold up the IPAM's thread). Value types crossing the seams
are frozen attrs classes defined here.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import attrs

from fabric.errors import ConfigError
from fabric.options import check_options  # backends validate backendConfig with it

if TYPE_CHECKING:  # the mesh is a leaf library; the API names its type only for checkers
    from fabric.mesh.tcp import MeshNode

__all__ = [
    "Node",
    "Peer",
    "PeerEvent",
    "Handle",
    "Allocation",
    "Workload",
    "Route",
    "Endpoint",
    "Capabilities",
    "NetworkSpec",
    "NetworkContext",
    "Backend",
    "IPAM",
    "PolicyEngine",
    "PeersCallback",
    "NODE_CONTAINER_ID",
    "ChunksCallback",
    "check_options",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,9}$")


@attrs.frozen
class Node:
    """This host as the fabric sees it."""

    name: str
    public_ip: IPv4Address  # underlay address published to peers (flannel's PublicIP)
    iface: str  # underlay interface
    mtu: int  # underlay MTU


@attrs.frozen
class Peer:
    """Another node of the same network, as announced by the IPAM or control plane."""

    name: str
    public_ip: IPv4Address
    subnets: tuple[IPv4Network, ...]
    backend_type: str = ""
    data: Mapping[str, Any] = attrs.field(factory=dict, hash=False)  # BackendData / VtepMAC...


@attrs.frozen
class PeerEvent:
    """A peer appeared or went away; what ``IPAM.subscribe`` delivers to backends."""

    kind: Literal["added", "removed"]
    peer: Peer


# Container id of handles a node allocates for itself (weave's `expose` address on the bridge):
# CNI GC never releases them.
NODE_CONTAINER_ID = "_node"


@attrs.frozen
class Handle:
    """The identity of one workload interface: what CNI calls (container id, ifname)."""

    container_id: str
    ifname: str

    def key(self) -> str:
        return f"{self.container_id}/{self.ifname}"

    @classmethod
    def from_key(cls, key: str) -> Handle:
        cid, _, ifname = key.rpartition("/")
        return cls(cid, ifname)


@attrs.frozen
class Allocation:
    """One address handed to one handle, inside one of this node's chunks."""

    handle: Handle
    ip: IPv4Address
    chunk: IPv4Network


@attrs.frozen
class Workload:
    """A pod / container interface to attach, as the runtime described it."""

    container_id: str
    ifname: str
    netns: str  # path of the network namespace (CNI_NETNS)
    name: str = ""  # pod name, if known (K8S_POD_NAME)
    namespace: str = "default"  # Kubernetes-style namespace, for policy
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)

    @property
    def handle(self) -> Handle:
        return Handle(self.container_id, self.ifname)


@attrs.frozen
class Route:
    """A route the workload gets (CNI result ``routes``): ``dst`` via ``gateway``."""

    dst: IPv4Network
    gateway: IPv4Address | None = None


@attrs.frozen
class Endpoint:
    """What a backend built for a workload; becomes the CNI result."""

    workload: Workload
    host_ifname: str  # host-side veth (or equivalent)
    mac: str  # MAC of the interface inside the workload
    addresses: tuple[IPv4Interface, ...]
    gateway: IPv4Address | None
    routes: tuple[Route, ...]
    mtu: int
    # CNI result ``dns`` (nameservers, domain, search, options), e.g. weaveDNS on the bridge
    dns: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class Capabilities:
    """What a backend can do and needs; the lab, the benches and the docs read it, and the
    capability lab test (tests/lab/test_capabilities.py) holds every backend to its claims.
    """

    # encrypts traffic between nodes when its option ``PasswordFile`` names a password file
    encryption: bool = False
    needs_l2: bool = False  # all peers must share one L2 segment (host-gw)
    multicast: bool = False  # a pod's multicast reaches the pods of every other node, once
    userspace: bool = False  # packets pass through a user-space process


@attrs.frozen
class NetworkSpec:
    """One network an agent serves, as configured (validated by the agent)."""

    name: str  # short, [a-z][a-z0-9-]{0,9}; devices are named after it
    cidr: IPv4Network
    backend: str
    subnet_len: int = 24
    subnet_min: IPv4Network | None = None
    subnet_max: IPv4Network | None = None
    backend_config: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    ipam: str = ""  # empty: the backend's default
    ipam_config: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    policy: str = "none"
    etcd_prefix: str = ""  # empty: /netfabric/<name>
    ipmasq: bool = False
    mtu: int | None = None  # force a pod MTU; default underlay MTU - overhead

    def __attrs_post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ConfigError(
                f"network name {self.name!r} is invalid",
                fix="use 1-10 characters: a lowercase letter, then lowercase letters, digits, '-'",
            )
        if not 8 <= self.subnet_len <= 30 or self.subnet_len < self.cidr.prefixlen:
            raise ConfigError(
                f"SubnetLen {self.subnet_len} does not fit Network {self.cidr}",
                fix="SubnetLen must be between the network's prefix length and 30",
            )

    @property
    def prefix(self) -> str:
        return (self.etcd_prefix or f"/netfabric/{self.name}").rstrip("/")


@attrs.define
class NetworkContext:
    """Everything a plugin instance gets from the agent for one network."""

    spec: NetworkSpec
    node: Node
    state_dir: Path  # private, persistent directory of this network on this node
    store: Any = None  # fabric.store.Store, or None when no etcd is configured
    # A running gossip mesh (``fabric.mesh.tcp.MeshNode``) a weave backend hands to the
    # ``ring`` IPAM: set by :meth:`Backend.prepare`, read by :meth:`IPAM.start`. None otherwise.
    mesh: MeshNode | None = None
    # This network's IPAM, set by the agent before ``Backend.prepare``. A backend may allocate
    # node-owned addresses (handles with container id NODE_CONTAINER_ID) from ``start`` on.
    ipam: IPAM | None = None
    log: logging.Logger = attrs.field(factory=lambda: logging.getLogger("fabric"))

    def device_name(self, kind: str) -> str:
        """A kernel device name unique to this network: ``<network>.<kind>`` (<= 15 chars)."""
        name = f"{self.spec.name}.{kind}"
        if len(name) > 15:
            raise ConfigError(f"device name {name!r} is longer than 15 characters")
        return name


PeersCallback = Callable[[Sequence[PeerEvent]], None]
ChunksCallback = Callable[[tuple[IPv4Network, ...]], None]


class Backend(abc.ABC):
    """Programs one network's data path on one node.

    Contract: ``__init__`` validates ``ctx.spec.backend_config`` and raises
    :class:`~fabric.errors.ConfigError` naming the bad field; it touches nothing.
    All other methods are called from the agent, serialised per network except
    :meth:`peers_changed` / :meth:`chunks_changed`, which may arrive from a
    control-plane thread while attach/detach run: implementations lock.
    Kernel state created by :meth:`prepare`/:meth:`start` must survive :meth:`stop`
    (pods keep working while the agent restarts) and is adopted on the next start.
    """

    name: ClassVar[str] = ""
    default_ipam: ClassVar[str] = "subnet"
    default_network: ClassVar[str] = ""  # CIDR used when the user names none (weave: 10.32.0.0/12)
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, ctx: NetworkContext) -> None:
        """Main thread, once per network. Validate the options in ``ctx.spec`` (ConfigError
        naming the field: fatal) and touch nothing: no kernel, datastore or threads yet."""
        self.ctx = ctx

    @property
    @abc.abstractmethod
    def mtu(self) -> int:
        """MTU of workload interfaces (underlay MTU minus encapsulation overhead).

        Any thread, cheap, no I/O; constant for the life of the instance (pods keep the MTU
        they were given at attach)."""

    def prepare(self) -> dict[str, Any]:
        """Create node devices whose identity peers need; return the BackendData to publish.

        Main thread, before the IPAM starts; may block on the kernel. Idempotent (a failed
        start is retried): adopt what exists. A weave backend sets ``ctx.mesh`` here."""
        return {}

    @abc.abstractmethod
    def start(self, chunks: tuple[IPv4Network, ...]) -> None:
        """Program the node for its chunks (bridge address, blackholes...).

        Main thread, after the IPAM started; may block on the kernel. Idempotent: called
        again after a failed start and after an agent restart, it adopts existing state.
        Raises BackendError (retried) or ConfigError/KernelFeatureMissing (fatal)."""

    @abc.abstractmethod
    def peers_changed(self, events: Sequence[PeerEvent]) -> None:
        """Add / remove what is needed to reach peers.

        The IPAM's thread, concurrently with attach/detach (lock your own state); first the
        current peers as ``added``, then changes. Quick and idempotent: the same event twice
        changes nothing. Peer records are untrusted: validate before touching the kernel.
        Raising is logged and shown in status; the next event is still delivered."""

    def chunks_changed(self, chunks: tuple[IPv4Network, ...]) -> None:
        """This node's own chunks changed (block claimed or released, ring range donated).

        The IPAM's thread; quick, idempotent; raising is logged. Default: ignore."""

    @abc.abstractmethod
    def attach(self, workload: Workload, allocation: Allocation) -> Endpoint:
        """Create the workload's interface in its netns with the allocated address.

        A control-socket thread, under the network's lock; may block on the kernel.
        Idempotent: attaching an attached workload returns the same endpoint. Raising fails
        the CNI ADD with the error's code; the agent then releases the allocation, so a
        half-made interface must be removed before raising."""

    @abc.abstractmethod
    def detach(self, workload: Workload) -> None:
        """Remove the workload's interface.

        A control-socket thread, under the network's lock (also from CNI GC and rollback).
        Idempotent; a missing netns or interface is not an error. Raising fails the CNI DEL,
        which the runtime retries."""

    def check(self, workload: Workload, allocation: Allocation) -> None:
        """Raise :class:`~fabric.errors.BackendError` if the workload's plumbing is wrong.

        A control-socket thread, under the network's lock; may block on the kernel;
        read-only, so idempotent."""

    def status(self) -> dict[str, Any]:
        """JSON-able facts for `fabric status` (``backend_status``): peers with their state,
        devices, data-path counters, anything an operator needs. Any thread, at any moment
        (also before or during start), without the network's lock: read your state under
        your own lock and never block on the network. Raising shows ``{"error": ...}``."""
        return {}

    def operations(self) -> Mapping[str, Callable[[Mapping[str, Any]], Any]]:
        """Named operations the CLI reaches through the agent's ``backend.NAME`` op (weave's
        ``connect``/``forget``/``rmpeer``, ``dns.add``...). Each takes the request's ``args``
        mapping, returns JSON-able data, raises :mod:`fabric.errors` types (the CLI shows them).
        Called on a control-socket thread, without the network's lock, only once the network
        is ready; may block briefly; should be idempotent where the operation allows (a
        second ``connect`` of one host changes nothing). Default: none."""
        return {}

    def stop(self) -> None:
        """Stop threads and processes; leave kernel state so pods keep working.

        Main thread, on SIGTERM, after the IPAM stopped; must return within seconds.
        Idempotent; raising is logged."""

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove every device, route and rule this backend created on the node.

        Main thread (`fabric down`), after the IPAM's teardown; also on a freshly built
        instance when no agent runs (offline teardown from the saved config): find what to
        remove by name and owner mark, not from memory. Idempotent; delete only what the
        fabric installed; raising is logged and the other plugins still tear down."""


class IPAM(abc.ABC):
    """Address management for one network on one node.

    Cluster level: :meth:`start` acquires (or, after a restart, re-uses) this
    node's chunks and keeps them alive; :meth:`subscribe` reports peers.
    Node level: :meth:`allocate` is idempotent per handle and persisted before it
    returns, so a restarted agent never hands out an address twice.
    """

    name: ClassVar[str] = ""

    def __init__(self, ctx: NetworkContext) -> None:
        """Main thread, once per network. Validate the options in ``ctx.spec`` (ConfigError
        naming the field: fatal) and touch nothing: no kernel, datastore or threads yet."""
        self.ctx = ctx

    @abc.abstractmethod
    def start(self, backend_data: Mapping[str, Any]) -> tuple[IPv4Network, ...]:
        """Acquire this node's chunks, publishing ``backend_data`` with them.

        Main thread; may block on the datastore or mesh (bounded: raise IPAMError with what
        is missing rather than wait forever). Idempotent: retried after a failure, and after
        a restart it re-uses this node's chunks and allocations."""

    def subscribe(self, on_peers: PeersCallback, on_chunks: ChunksCallback | None = None) -> None:
        """Deliver current peers as ``added`` events, then changes, from the IPAM's thread.

        Called once, after start. The callbacks may raise; the IPAM logs that and goes on."""

    @abc.abstractmethod
    def chunks(self) -> tuple[IPv4Network, ...]:
        """This node's chunks now. Any thread; no blocking I/O."""

    @abc.abstractmethod
    def allocate(self, handle: Handle, requested: IPv4Address | None = None) -> Allocation:
        """Return the handle's address, allocating one if it has none. Raises PoolExhausted.

        A control-socket thread, under the network's lock (also the main thread, for a
        backend's node-owned handles in ``start``). Idempotent per handle; persisted before it
        returns, so a restarted agent never hands an address out twice; may block briefly on
        the datastore or mesh (a ring peer asking another for space), never forever.

        ``requested`` is a static address the runtime asked for (CNI ``IP=`` argument,
        ``args.cni.ips``, ``runtimeConfig.ips``): the result holds exactly that address or
        the call raises, never hands out another one:
        :class:`~fabric.errors.ConfigError` with ``field="ips"`` when it is not an
        allocatable address of this node's chunks (outside them, or a chunk's network,
        gateway or broadcast address); :class:`~fabric.errors.IPAMError` when another
        handle holds it or this handle already holds a different address.
        """

    @abc.abstractmethod
    def release(self, handle: Handle) -> Allocation | None:
        """Free the handle's address; None if it had none.

        A control-socket thread, under the network's lock; may block briefly on the disk or
        datastore. Idempotent; persisted before it returns; IPAMError when it cannot be."""

    @abc.abstractmethod
    def allocations(self) -> dict[Handle, Allocation]:
        """Every live allocation on this node (CNI GC, status). Any thread; no network I/O."""

    def status(self) -> dict[str, Any]:
        """JSON-able facts for `fabric status` (``ipam_status``): chunks, lease expiry, peers,
        datastore or mesh health. Any thread, at any moment; never blocks for long."""
        return {}

    def stop(self) -> None:
        """Stop renewing/watching; keep chunks and allocations for the next start.

        Main thread, on SIGTERM, before the backend stops. Idempotent; raising is logged."""

    @abc.abstractmethod
    def teardown(self) -> None:
        """Give this node's chunks back to the cluster and forget allocations.

        Main thread (`fabric down`), before the backend's teardown. Idempotent; a datastore
        that cannot be reached is logged (the lease expires by itself) rather than fatal."""


class PolicyEngine(abc.ABC):
    """Enforces network policy on this node's workload endpoints.

    :meth:`set_policies` replaces the whole policy set atomically: either every
    rule is in force afterwards or, on error, the previous rules still are.
    Endpoint changes are applied incrementally.
    """

    name: ClassVar[str] = ""

    def __init__(self, ctx: NetworkContext) -> None:
        """Main thread, once per network. Validate the options in ``ctx.spec`` (ConfigError
        naming the field: fatal) and touch nothing: no kernel, datastore or threads yet."""
        self.ctx = ctx

    def start(self) -> None:
        """Create base state (tables, chains).

        Main thread, after the backend started; idempotent (retried, and re-run after a
        restart over rules that are still in force). PolicyError is fatal."""

    @abc.abstractmethod
    def endpoint_added(self, endpoint: Endpoint) -> None:
        """A workload interface exists: apply the policies that select it.

        A control-socket thread under the network's lock, after the backend attached it
        (and on start, once per persisted endpoint). Idempotent. Raising fails the CNI ADD
        and the agent rolls the pod back: a pod that policy should isolate never comes up
        open."""

    @abc.abstractmethod
    def endpoint_removed(self, endpoint: Endpoint) -> None:
        """A workload interface is gone: drop its rules and set memberships.

        A control-socket thread under the network's lock, after the backend detached it.
        Idempotent (an unknown endpoint is not an error); raising is logged, never blocks
        the CNI DEL."""

    @abc.abstractmethod
    def set_policies(self, policies: Sequence[Any]) -> None:
        """Replace all policies (``fabric.policy.model`` objects) in one transaction.

        A control-socket thread (``policy.apply``/``policy.delete``/``policy.label``), one
        change at a time; may block on the kernel (one nft transaction). Idempotent: the same
        set twice leaves the same rules. Atomic: on error (PolicyError naming the policy) the
        previous rules stay in force."""

    def status(self) -> dict[str, Any]:
        """JSON-able facts (rules, counters). Any thread, at any moment; never blocks for long;
        raising shows ``{"error": ...}``."""
        return {}

    def stop(self) -> None:
        """Leave rules in force (pods stay protected while the agent restarts). Main thread,
        on SIGTERM; idempotent; raising is logged."""

    def teardown(self) -> None:
        """Remove every rule this engine created. Main thread (`fabric down`); idempotent;
        raising is logged and the backend still tears down."""
