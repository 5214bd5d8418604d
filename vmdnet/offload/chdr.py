"""VnetHdr <-> struct vn_net_hdr (csrc/vn_offload.h), for every cffi caller."""

from __future__ import annotations

from vmdnet._native import ffi
from vmdnet.virtio.net_hdr import VnetHdr


def hdr_to_c(hdr: VnetHdr, c) -> None:
    """Fill the C header `c` from `hdr` (fields truncated to their C widths)."""
    c.flags = hdr.flags & 0xFF
    c.gso_type = hdr.gso_type & 0xFF
    c.hdr_len = hdr.hdr_len & 0xFFFF
    c.gso_size = hdr.gso_size & 0xFFFF
    c.csum_start = hdr.csum_start & 0xFFFF
    c.csum_offset = hdr.csum_offset & 0xFFFF
    c.num_buffers = hdr.num_buffers & 0xFFFF


def new_c_hdr(hdr: VnetHdr):
    """A new `struct vn_net_hdr *` holding `hdr`."""
    c = ffi.new("struct vn_net_hdr *")
    hdr_to_c(hdr, c)
    return c


def hdr_from_c(c) -> VnetHdr:
    """The VnetHdr a C header holds."""
    return VnetHdr(flags=c.flags, gso_type=c.gso_type, hdr_len=c.hdr_len,
                   gso_size=c.gso_size, csum_start=c.csum_start, csum_offset=c.csum_offset,
                   num_buffers=c.num_buffers)
