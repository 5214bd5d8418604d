"""struct virtio_net_hdr (virtio 1.x, section 5.1.6): 10, 12 and 20-byte forms.

Little-endian on the wire (VERSION_1).  10 bytes is the legacy header without
num_buffers, 12 adds num_buffers (MRG_RXBUF or VERSION_1), 20 adds the hash
report fields (HASH_REPORT).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_F_RSC_INFO = 4

VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

HDR_SIZES = (10, 12, 20)
_FMT = {10: "<BBHHHH", 12: "<BBHHHHH", 20: "<BBHHHHHIH2x"}


@dataclass
class VnetHdr:
    """One virtio_net_hdr, fields named as in the spec."""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0
    hash_value: int = 0
    hash_report: int = 0

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, size: int = 12) -> VnetHdr:
        """Parse the first `size` bytes of `buf` (10, 12 or 20)."""
        if size not in _FMT:
            raise ValueError(f"virtio_net_hdr size must be one of {HDR_SIZES}, not {size}")
        if len(buf) < size:
            raise ValueError(f"need {size} bytes for a virtio_net_hdr, got {len(buf)}")
        fields = struct.unpack_from(_FMT[size], buf)
        return cls(*fields)

    def pack(self, size: int = 12) -> bytes:
        """Serialize as `size` bytes (10, 12 or 20)."""
        if size not in _FMT:
            raise ValueError(f"virtio_net_hdr size must be one of {HDR_SIZES}, not {size}")
        vals = [self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
                self.csum_offset, self.num_buffers, self.hash_value, self.hash_report]
        n = {10: 6, 12: 7, 20: 9}[size]
        return struct.pack(_FMT[size], *vals[:n])
