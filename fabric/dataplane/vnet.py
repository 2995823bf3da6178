"""virtio_net_hdr: the 10-byte header TUN/TAP prepend with IFF_VNET_HDR (native byte order)."""

from __future__ import annotations

import struct

__all__ = [
    "VNET_HDR_LEN",
    "F_NEEDS_CSUM",
    "F_DATA_VALID",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_UDP",
    "GSO_TCPV6",
    "GSO_UDP_L4",
    "GSO_ECN",
    "VnetHdr",
    "NO_VNET",
    "pack",
    "unpack",
]

VNET_HDR_LEN = 10
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

_S = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VnetHdr = tuple  # (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def pack(flags: int = 0, gso_type: int = GSO_NONE, hdr_len: int = 0, gso_size: int = 0,
         csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return _S.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def unpack(buf, off: int = 0) -> VnetHdr:
    return _S.unpack_from(buf, off)


NO_VNET = pack()
