"""Network policy for netfabric: Kubernetes NetworkPolicy semantics on any backend.

Engines (entry-point group ``fabric.policy``): ``none`` (:mod:`.allow_all`, allow all)
and ``nftables`` (:mod:`.engine`). Modules: :mod:`.model` (attrs types), :mod:`.load`
(YAML/JSON documents, validation naming the field), :mod:`.compile` (policies -> nft
state), :mod:`.rules` (one endpoint's matches: named ports, reply direction),
:mod:`.nftstate` (state diff -> one ``nft -j`` transaction), :mod:`.peers` (endpoints
shared between nodes through the store), :mod:`.service` (the agent's ``policy.*`` ops),
:mod:`.explain`, :mod:`.metrics`, :mod:`.cli` (``fabric policy``), :mod:`.probe` (real
TCP/UDP reachability checks for tests and benchmarks).
"""
