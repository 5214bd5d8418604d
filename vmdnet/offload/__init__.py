"""Offload engine: virtio_net_hdr validation, checksums and software GSO.

The work is done in C (csrc/vn_offload.c, csrc/vn_csum.c); this module checks
arguments, owns errors and turns results into Python objects.  For the data
path use the batch entry points (`fix_batch`, or the C functions directly from
other C code); `segment()` and friends are for control paths and tests.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence

from vmdnet._native import ffi, lib
from vmdnet.offload.chdr import new_c_hdr
from vmdnet.virtio.net_hdr import (
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_F_RSC_INFO,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VnetHdr,
)

__all__ = [
    "VnetHdr", "BadHeader", "Reason", "checksum", "validate", "complete_checksum",
    "segment", "verify", "fix_batch", "Coalescer", "MAX_FRAME", "USO_MAX_SEGS",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM", "VIRTIO_NET_HDR_F_DATA_VALID", "VIRTIO_NET_HDR_F_RSC_INFO",
    "VIRTIO_NET_HDR_GSO_NONE", "VIRTIO_NET_HDR_GSO_TCPV4", "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_TCPV6", "VIRTIO_NET_HDR_GSO_UDP_L4", "VIRTIO_NET_HDR_GSO_ECN",
]

MAX_FRAME = lib.VN_MAX_FRAME
USO_MAX_SEGS = lib.VN_USO_MAX_SEGS
# The smallest gso_size is 1, so a maximal frame splits into at most this many
# segments.  What each repeats (L2-L4 headers; IPv6 extension headers make that
# up to a few KiB) is measured per frame by _segment_room, not assumed.
_MAX_SEGS = MAX_FRAME
_V6_FRAG_HLEN = 8  # the fragment header UFO over IPv6 adds to every fragment


class Reason(enum.IntEnum):
    """Why a header was refused (enum vn_bad in csrc/vn_offload.h)."""

    FRAME_SHORT = lib.VN_BAD_FRAME_SHORT
    FRAME_LONG = lib.VN_BAD_FRAME_LONG
    HDR_LEN = lib.VN_BAD_HDR_LEN
    GSO_TYPE = lib.VN_BAD_GSO_TYPE
    GSO_SIZE = lib.VN_BAD_GSO_SIZE
    GSO_NO_CSUM = lib.VN_BAD_GSO_NO_CSUM
    CSUM_START = lib.VN_BAD_CSUM_START
    CSUM_OFFSET = lib.VN_BAD_CSUM_OFFSET
    L3 = lib.VN_BAD_L3
    L4 = lib.VN_BAD_L4
    USO_SEGS = lib.VN_BAD_USO_SEGS
    NO_SPACE = lib.VN_BAD_NO_SPACE


class BadHeader(ValueError):
    """A virtio_net_hdr/frame pair that a tap would refuse (or we refuse on purpose)."""

    def __init__(self, reason: Reason):
        super().__init__(reason.name)
        self.reason = reason


def _check(rc: int) -> int:
    if rc < 0:
        raise BadHeader(Reason(-rc))
    return rc


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 sum of `data` starting from `initial`: folded, NOT inverted.

    Both are big-endian 16-bit numbers as read from the packet: a correct
    packet's sum over its checksummed bytes is 0xffff; a field to fill in is
    ``~checksum(...) & 0xffff``.
    """
    if not 0 <= initial <= 0xFFFF:
        raise ValueError("initial must be a 16-bit value")
    buf = ffi.from_buffer(data)
    return lib.vn_checksum_be(buf, len(buf), initial)


def validate(hdr: VnetHdr, frame: bytes | bytearray | memoryview) -> None:
    """Raise BadHeader unless a Linux tap would accept `hdr` with `frame`.

    Stricter than the kernel where documented in csrc/vn_offload.c.
    """
    buf = ffi.from_buffer(frame)
    _check(lib.vn_validate(new_c_hdr(hdr), buf, len(buf), ffi.NULL))


def complete_checksum(hdr: VnetHdr, frame: bytes | bytearray | memoryview) -> bytes:
    """Return `frame` with the checksum NEEDS_CSUM asks for filled in."""
    out = bytearray(frame)
    buf = ffi.from_buffer(out)
    _check(lib.vn_complete_csum(new_c_hdr(hdr), buf, len(out)))
    return bytes(out)


def _new_frag_id() -> int:
    return int.from_bytes(os.urandom(4), "big")


def _segment_room(hdr: VnetHdr, buf, n: int) -> tuple[int, int]:
    """(segments, arena bytes) a validated frame can need: each segment repeats
    the frame's L2-L4 headers, plus a fragment header for UFO over IPv6."""
    pkt = ffi.new("struct vn_pkt *")
    _check(lib.vn_validate(new_c_hdr(hdr), buf, n, pkt))
    gso_size = hdr.gso_size & 0xFFFF
    if hdr.gso_type & 0xFF == VIRTIO_NET_HDR_GSO_NONE or not pkt.l4_off or not gso_size:
        return 1, n
    segs = min(_MAX_SEGS, max(1, -(-(n - pkt.l4_off) // gso_size)))
    return segs, n + segs * (pkt.l4_off + pkt.l4_hlen + _V6_FRAG_HLEN)


def segment(hdr: VnetHdr, frame: bytes | bytearray | memoryview,
            v6_frag_id: int | None = None) -> list[bytes]:
    """Software GSO: the packets a tap without offloads would emit for this write.

    A frame that does not need splitting comes back as one packet with its
    checksum completed.  `v6_frag_id` is the identification for IPv6 UFO
    fragment headers (random when not given, as the kernel's is).
    """
    buf = ffi.from_buffer(frame)
    n = len(buf)
    max_segs, cap = _segment_room(hdr, buf, n)
    out = ffi.new("uint8_t[]", cap)
    lens = ffi.new("uint32_t[]", max_segs)
    fid = _new_frag_id() if v6_frag_id is None else v6_frag_id & 0xFFFFFFFF
    nseg = _check(lib.vn_segment(new_c_hdr(hdr), buf, n, fid, out, cap, lens, max_segs))
    raw = ffi.buffer(out, cap)
    result, pos = [], 0
    for i in range(nseg):
        ln = lens[i]
        result.append(raw[pos:pos + ln])
        pos += ln
    return result


def verify(frame: bytes | bytearray | memoryview) -> bool:
    """True when the IPv4 header and TCP/UDP checksums of `frame` are correct."""
    buf = ffi.from_buffer(frame)
    return bool(lib.vn_verify(buf, len(buf)))


class FixBatch:
    """Preallocated state for `fix_batch`: one C call per batch, no per-call allocation.

    `run(items)` takes (VnetHdr-like C header, frame) pairs already prepared by
    `set(i, hdr, frame)`; the outputs are (result, first_seg) per frame and the
    segment lengths, all views into the preallocated arena.
    """

    def __init__(self, max_frames: int = 64, arena: int = 4 << 20, max_segs: int = 8192):
        self.max_frames = max_frames
        self.ents = ffi.new("struct vn_batch_ent[]", max_frames)
        self.arena = ffi.new("uint8_t[]", arena)
        self.arena_cap = arena
        self.seg_lens = ffi.new("uint32_t[]", max_segs)
        self.max_segs = max_segs
        self._keep: list[object] = [None] * max_frames
        self._frag_id = _new_frag_id()

    def set(self, i: int, hdr: VnetHdr, frame: bytes | bytearray | memoryview) -> None:
        """Put frame `i` of the next batch in place (control paths and tests)."""
        e = self.ents[i]
        buf = ffi.from_buffer(frame)
        self._keep[i] = buf
        e.hdr = new_c_hdr(hdr)[0]
        e.frame = buf
        e.len = len(buf)

    def run(self, n: int) -> int:
        """Fix frames 0..n-1 in one C call; return the number of segments written."""
        if not 0 <= n <= self.max_frames:
            raise ValueError(f"batch of {n} frames, room for {self.max_frames}")
        segs = lib.vn_fix_batch(self.ents, n, self._frag_id, self.arena, self.arena_cap,
                                self.seg_lens, self.max_segs)
        self._frag_id = (self._frag_id + n) & 0xFFFFFFFF
        return segs


def fix_batch(items: Sequence[tuple[VnetHdr, bytes]]) -> list[list[bytes] | BadHeader]:
    """Segment/checksum many frames in one C call; per frame, its packets or the error."""
    fb = FixBatch(max_frames=max(1, len(items)),
                  arena=sum(len(f) for _, f in items) * 2 + 65536 * 4 + 4096,
                  max_segs=max(1, sum(len(f) for _, f in items)))
    for i, (h, f) in enumerate(items):
        fb.set(i, h, f)
    fb.run(len(items))
    raw = ffi.buffer(fb.arena, fb.arena_cap)
    out: list[list[bytes] | BadHeader] = []
    pos = 0
    for i in range(len(items)):
        e = fb.ents[i]
        if e.result < 0:
            out.append(BadHeader(Reason(-e.result)))
            continue
        pkts = []
        for k in range(e.first_seg, e.first_seg + e.result):
            ln = fb.seg_lens[k]
            pkts.append(raw[pos:pos + ln])
            pos += ln
        out.append(pkts)
    return out


from vmdnet.offload.rsc import Coalescer  # noqa: E402  (RSC engine, csrc/vn_rsc.c)
