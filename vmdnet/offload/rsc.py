"""Receive segment coalescing (RSC) for the guest: the C engine in csrc/vn_rsc.c.

A `Coalescer` takes the frames the RX path read from the tap, with the time
(passed in, never read here), and returns what must be delivered to the guest
now: bypassed frames untouched, segments that go alone, and coalesced units.
Units a flow holds leave when their interval runs out (`poll`, `deadline`) or
on `flush`.  Output mode:

- ``"gso"`` for a guest with GUEST_TSO4/6 (Linux): a unit is a GSO packet as
  Linux GRO hands one to a tap reader (NEEDS_CSUM, csum_start at the TCP
  header, csum_offset 16, gso_type TCPV4/TCPV6, gso_size = MSS).
- ``"rsc"`` for a guest with RSC (GUEST_RSC4/6, RSC_EXT): VIRTIO_NET_HDR_F_RSC_INFO
  with the segment count in csum_start and duplicate ACKs in csum_offset.

The rules (what joins a unit, what finalizes it) are in csrc/vn_rsc.c's
"Theory of operation".  Per-packet work is C; `push_batch` runs a whole list
of frames in one C call, as a C RX loop calls vn_rsc_push() per packet.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from vmdnet._native import check_errno, ffi, lib
from vmdnet.offload.chdr import hdr_from_c, hdr_to_c
from vmdnet.virtio import features as F
from vmdnet.virtio.net_hdr import VnetHdr

__all__ = [
    "Coalescer", "Mode", "Output", "OutKind", "Coalescing", "coalescing_for_features",
    "MAX_FLOWS", "MAX_BYTES", "MIN_BYTES", "DEFAULT_INTERVAL_NS",
]

log = logging.getLogger(__name__)

MAX_FLOWS = lib.VN_RSC_MAX_FLOWS
MAX_BYTES = lib.VN_RSC_MAX_BYTES
MIN_BYTES = lib.VN_RSC_MIN_BYTES
DEFAULT_INTERVAL_NS = lib.VN_RSC_DEFAULT_INTERVAL_NS
_PUSH_MAX_OUT = lib.VN_RSC_PUSH_MAX_OUT
# Times are u64 nanoseconds in C.
_U64_MAX = (1 << 64) - 1
# Frames handed to C per push_batch round: bounds the output table (two
# outputs per frame plus every held unit) and keeps rounds short.
_BATCH_CHUNK = 256
# Bytes before the IP header a unit buffer reserves (Ethernet + two VLAN tags)
# and the buffer alignment, as csrc/vn_rsc.c sizes its unit buffers.
_L2_MAX = 14 + 2 * 4
_BUF_ALIGN = 64
# push_batch arena beyond the worst case of one frame, so that a round takes
# many frames: spare unit buffers and spare maximal frames.
_ARENA_SPARE_UNITS = 4
_ARENA_SPARE_FRAMES = 4

Output = tuple[VnetHdr, bytes]


class Mode(enum.Enum):
    """Output mode for coalesced units."""

    GSO = lib.VN_RSC_MODE_GSO
    RSC = lib.VN_RSC_MODE_RSC


class OutKind(enum.IntEnum):
    """What an output is (VN_RSC_OUT_* in csrc/vn_rsc.h)."""

    BYPASS = lib.VN_RSC_OUT_BYPASS
    SEGMENT = lib.VN_RSC_OUT_SEGMENT
    UNIT = lib.VN_RSC_OUT_UNIT


@dataclass(frozen=True)
class Coalescing:
    """How to coalesce for a guest: the mode and which IP versions."""

    mode: Mode
    ipv4: bool
    ipv6: bool


def _has(features: int, bit: int) -> bool:
    return bool(features >> bit & 1)


def coalescing_for_features(features: int) -> Coalescing | None:
    """What the negotiated virtio features allow, or None for no coalescing.

    RSC (RSC_EXT, or QEMU's legacy GUEST_RSC4/6 bits 41/42) wins; the legacy
    bits say which versions, and with RSC_EXT alone GUEST_TSO4/6 say.  Else a
    guest with GUEST_TSO4/6 gets GSO packets for those versions.
    """
    tso4 = _has(features, F.VIRTIO_NET_F_GUEST_TSO4)
    tso6 = _has(features, F.VIRTIO_NET_F_GUEST_TSO6)
    rsc4 = _has(features, F.VIRTIO_NET_F_GUEST_RSC4)
    rsc6 = _has(features, F.VIRTIO_NET_F_GUEST_RSC6)
    if rsc4 or rsc6:
        return Coalescing(Mode.RSC, rsc4, rsc6)
    if _has(features, F.VIRTIO_NET_F_RSC_EXT) and (tso4 or tso6):
        return Coalescing(Mode.RSC, tso4, tso6)
    if tso4 or tso6:
        return Coalescing(Mode.GSO, tso4, tso6)
    return None


def _check_time(now_ns: int) -> int:
    if not isinstance(now_ns, int) or not 0 <= now_ns <= _U64_MAX:
        raise ValueError(f"time must be an int in 0..2**64-1 nanoseconds, not {now_ns!r}")
    return now_ns


class Coalescer:
    """TCP receive segment coalescing for one RX queue (not thread-safe).

    `interval_ns`: how long a unit may be held; `max_bytes`: the largest
    coalesced IP packet; `mode`: "gso" or "rsc" (or a `Mode`); `max_flows`:
    units held at once (least recently used evicted); `data_valid`: mark
    verified segments delivered alone VIRTIO_NET_HDR_F_DATA_VALID (and rsc
    units too); `ipv4`/`ipv6`: which versions to coalesce.
    """

    def __init__(self, interval_ns: int = DEFAULT_INTERVAL_NS, max_bytes: int = MAX_BYTES, *,
                 mode: str | Mode = Mode.GSO, max_flows: int = MAX_FLOWS,
                 data_valid: bool = True, ipv4: bool = True, ipv6: bool = True):
        self.mode = mode if isinstance(mode, Mode) else Mode[str(mode).upper()]
        if not isinstance(interval_ns, int) or not 1 <= interval_ns <= _U64_MAX:
            raise ValueError(f"interval_ns must be a positive int, not {interval_ns!r}")
        if not isinstance(max_bytes, int) or not MIN_BYTES <= max_bytes <= MAX_BYTES:
            raise ValueError(f"max_bytes must be in {MIN_BYTES}..{MAX_BYTES}, not {max_bytes!r}")
        if not isinstance(max_flows, int) or not 1 <= max_flows <= MAX_FLOWS:
            raise ValueError(f"max_flows must be in 1..{MAX_FLOWS}, not {max_flows!r}")
        self.interval_ns, self.max_bytes, self.max_flows = interval_ns, max_bytes, max_flows
        cfg = ffi.new("struct vn_rsc_cfg *")
        cfg.interval_ns = interval_ns
        cfg.max_bytes = max_bytes
        cfg.max_flows = max_flows
        cfg.mode = self.mode.value
        cfg.data_valid = int(bool(data_valid))
        cfg.ipv4 = int(bool(ipv4))
        cfg.ipv6 = int(bool(ipv6))
        pp = ffi.new("struct vn_rsc **")
        check_errno(lib.vn_rsc_new(cfg, pp), "vn_rsc_new")
        self._r = ffi.gc(pp[0], lib.vn_rsc_free)
        self._out = ffi.new("struct vn_rsc_out[]", max(_PUSH_MAX_OUT, max_flows))
        self._in_hdr = ffi.new("struct vn_net_hdr *")
        self._batch: tuple | None = None
        self.last_kinds: list[OutKind] = []

    @classmethod
    def for_features(cls, features: int, **kwargs: object) -> Coalescer | None:
        """A coalescer for these negotiated virtio features, or None (see
        `coalescing_for_features`); `kwargs` go to the constructor."""
        how = coalescing_for_features(features)
        if how is None:
            return None
        return cls(mode=how.mode, ipv4=how.ipv4, ipv6=how.ipv6, **kwargs)  # type: ignore[arg-type]

    def _collect(self, out, n: int) -> list[Output]:
        """Copy `n` C outputs into Python objects (before the next C call)."""
        result: list[Output] = []
        kinds: list[OutKind] = []
        for i in range(n):
            o = out[i]
            result.append((hdr_from_c(o.hdr), ffi.buffer(o.data, o.len)[:]))
            kinds.append(OutKind(o.kind))
        self.last_kinds = kinds
        return result

    def push(self, frame: bytes | bytearray | memoryview, now_ns: int,
             hdr: VnetHdr | None = None) -> list[Output]:
        """Offer one received frame; return what must be delivered now, in order.

        `hdr` is the frame's virtio_net_hdr from the tap, if any: DATA_VALID
        makes its checksums trusted, GSO or NEEDS_CSUM makes it bypass.
        """
        buf = ffi.from_buffer(frame)
        c_hdr = ffi.NULL
        if hdr is not None:
            hdr_to_c(hdr, self._in_hdr)
            c_hdr = self._in_hdr
        n = check_errno(lib.vn_rsc_push(self._r, c_hdr, buf, len(buf), _check_time(now_ns),
                                        self._out, _PUSH_MAX_OUT), "vn_rsc_push")
        return self._collect(self._out, n)

    def _batch_buffers(self) -> tuple:
        if self._batch is None:
            buf_size = (_L2_MAX + self.max_bytes + _BUF_ALIGN - 1) & ~(_BUF_ALIGN - 1)
            outs = self.max_flows + 2 * _BATCH_CHUNK
            # Enough for the worst single frame (every held unit due, then a
            # unit and the frame itself); C stops a round early when short.
            arena = (self.max_flows + _ARENA_SPARE_UNITS) * buf_size + _ARENA_SPARE_FRAMES * 65600
            self._batch = (ffi.new("struct vn_rsc_batch_in[]", _BATCH_CHUNK),
                           ffi.new("struct vn_rsc_out[]", outs), outs,
                           ffi.new("uint8_t[]", arena), arena)
        return self._batch

    def push_batch(self, frames: Sequence[bytes | tuple[VnetHdr, bytes]],
                   now_ns: int | Sequence[int]) -> list[Output]:
        """`push` over many frames in few C calls; before each frame, units
        due at its time are delivered (as if `poll` ran first).

        `frames` are frames or (hdr, frame) pairs; `now_ns` is one time for
        all or one per frame.
        """
        times = [now_ns] * len(frames) if isinstance(now_ns, int) else list(now_ns)
        if len(times) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(times)} times")
        ins, outs, n_outs, arena, arena_cap = self._batch_buffers()
        result: list[Output] = []
        kinds: list[OutKind] = []
        consumed = ffi.new("uint32_t *")
        pos = 0
        while pos < len(frames):
            chunk = frames[pos:pos + _BATCH_CHUNK]
            keep = self._fill_batch(ins, chunk, times[pos:pos + len(chunk)])
            n = check_errno(lib.vn_rsc_push_batch(self._r, ins, len(chunk), outs, n_outs,
                                                  arena, arena_cap, consumed),
                            "vn_rsc_push_batch")
            del keep
            if consumed[0] == 0:
                raise RuntimeError("vn_rsc_push_batch made no progress")
            result += self._collect(outs, n)
            kinds += self.last_kinds
            pos += consumed[0]
        self.last_kinds = kinds
        return result

    @staticmethod
    def _fill_batch(ins, chunk: Sequence[bytes | tuple[VnetHdr, bytes]],
                    times: Sequence[int]) -> list[object]:
        keep: list[object] = []
        for i, item in enumerate(chunk):
            e = ins[i]
            if isinstance(item, tuple):
                hdr, frame = item
                hdr_to_c(hdr, e.hdr)
                e.has_hdr = 1
            else:
                frame, e.has_hdr = item, 0
            buf = ffi.from_buffer(frame)
            keep.append(buf)
            e.frame = buf
            e.len = len(buf)
            e.now_ns = _check_time(times[i])
        return keep

    def _drain(self, call, what: str) -> list[Output]:
        result: list[Output] = []
        kinds: list[OutKind] = []
        while True:
            n = check_errno(call(), what)
            if n == 0:
                break
            result += self._collect(self._out, n)
            kinds += self.last_kinds
        self.last_kinds = kinds
        return result

    def poll(self, now_ns: int) -> list[Output]:
        """Deliver every unit whose interval has run out by `now_ns`."""
        t = _check_time(now_ns)
        cap = len(self._out)
        return self._drain(lambda: lib.vn_rsc_poll(self._r, t, self._out, cap), "vn_rsc_poll")

    def flush(self) -> list[Output]:
        """Deliver every held unit (device reset, offload change, shutdown)."""
        cap = len(self._out)
        return self._drain(lambda: lib.vn_rsc_flush(self._r, self._out, cap), "vn_rsc_flush")

    def deadline(self) -> int | None:
        """When `poll` next has something to deliver, or None when nothing is held."""
        d = ffi.new("uint64_t *")
        return int(d[0]) if lib.vn_rsc_deadline(self._r, d) else None

    @property
    def held(self) -> int:
        """Units held now."""
        return int(lib.vn_rsc_held(self._r))

    @property
    def stats(self) -> dict[str, int]:
        """Counters, keyed ``rsc_<name>`` (struct vn_rsc_stats) to merge into device stats."""
        st = ffi.new("struct vn_rsc_stats *")
        lib.vn_rsc_get_stats(self._r, st)
        return {f"rsc_{name}": int(getattr(st, name))
                for name, _ in ffi.typeof("struct vn_rsc_stats").fields}
