"""CNI error codes and the error result `fabric-cni` prints (CNI spec 1.1, section 5).

Codes 0-99 are the spec's well-known ones; 100+ are netfabric's own:

===  =====================================================================
  1  incompatible CNI version (unsupported cniVersion, or GC/STATUS below 1.1.0)
  2  unsupported field in the network config (message names key and value)
  3  container unknown (CHECK of an attachment the agent does not have)
  4  invalid or missing environment variable (message names it)
  5  I/O failure (reading stdin)
  6  failed to decode (stdin is not JSON / not UTF-8)
  7  invalid network config (a field has a wrong type or value)
 11  try again later (agent unreachable, timed out, not ready, datastore down)
 50  STATUS: the plugin cannot serve ADD (agent down or network not ready)
 51  STATUS: not available and existing containers may have limited connectivity
100  interface already exists (prevResult lists CNI_IFNAME in CNI_NETNS)
101  data-path failure in the agent (BackendError)
102  the kernel lacks a feature the network's backend needs
103  address management failure (IPAMError)
104  no free address left (PoolExhausted)
105  policy failure (PolicyError)
110  any other agent failure (internal error, unknown kind)
===  =====================================================================
"""

from __future__ import annotations

TYPE_CHECKING = False  # no `typing` at run time: fabric-cni imports this at every pod start
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "INCOMPATIBLE_VERSION",
    "UNSUPPORTED_FIELD",
    "UNKNOWN_CONTAINER",
    "INVALID_ENVIRONMENT",
    "IO_FAILURE",
    "DECODING_FAILURE",
    "INVALID_NETWORK_CONFIG",
    "TRY_AGAIN_LATER",
    "NOT_AVAILABLE",
    "LIMITED_CONNECTIVITY",
    "INTERFACE_EXISTS",
    "BACKEND_FAILURE",
    "KERNEL_FEATURE_MISSING",
    "IPAM_FAILURE",
    "POOL_EXHAUSTED",
    "POLICY_FAILURE",
    "AGENT_FAILURE",
    "MESSAGES",
    "CNIError",
]

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
INTERFACE_EXISTS = 100
BACKEND_FAILURE = 101
KERNEL_FEATURE_MISSING = 102
IPAM_FAILURE = 103
POOL_EXHAUSTED = 104
POLICY_FAILURE = 105
AGENT_FAILURE = 110

# Default short `msg` per code; the specific reason goes to `details`.
MESSAGES = {
    INCOMPATIBLE_VERSION: "incompatible CNI version",
    UNSUPPORTED_FIELD: "unsupported field in network configuration",
    UNKNOWN_CONTAINER: "container unknown",
    INVALID_ENVIRONMENT: "invalid environment variables",
    IO_FAILURE: "I/O failure",
    DECODING_FAILURE: "failed to decode content",
    INVALID_NETWORK_CONFIG: "invalid network configuration",
    TRY_AGAIN_LATER: "try again later",
    NOT_AVAILABLE: "plugin not available",
    LIMITED_CONNECTIVITY: "plugin not available; existing containers may have limited connectivity",
    INTERFACE_EXISTS: "interface already exists",
    BACKEND_FAILURE: "data path failure",
    KERNEL_FEATURE_MISSING: "kernel feature missing",
    IPAM_FAILURE: "address management failure",
    POOL_EXHAUSTED: "no free address",
    POLICY_FAILURE: "policy failure",
    AGENT_FAILURE: "netfabric agent failure",
}


class CNIError(Exception):
    """An error result: printed as JSON on stdout, exit status 1."""

    def __init__(self, code: int, details: str, msg: str | None = None) -> None:
        self.code = code
        self.msg = msg or MESSAGES.get(code, "error")
        self.details = details
        super().__init__(f"{self.msg}: {details}" if details else self.msg)

    def result(self, cni_version: str) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg,
                "details": self.details}
