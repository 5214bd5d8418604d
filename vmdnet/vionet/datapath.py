"""vionet's data path: guest memory, virtqueues, and TX/RX batches in C.

Thin by design: this module allocates the C structures (csrc/vn_mem.c,
vn_vring.c, vn_netq.c), maps the VMM's memory regions, calls one C function
per batch and turns counters into a dict.  No packet byte is touched here.

cffi releases the GIL for every C call, so a TX thread and an RX thread may
each run their own queue at once.  Rules the caller keeps:

- a queue (Vring with its TxPath or RxPath) is used by one thread at a time;
- the memory table changes (map/add/remove/unmap) only while no batch runs,
  and every Vring on it is then re-translated (``Vring.translate``) or reset;
  batches check a generation counter and refuse stale rings;
- ``Vring.call_fd`` is changed only between batches of that queue.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from vmdnet._native import check_errno, ffi, lib
from vmdnet.offload import Reason
from vmdnet.offload.rsc import Coalescer

log = logging.getLogger(__name__)

MAX_REGIONS = lib.VN_MEM_MAX_REGIONS
MAX_QUEUE_SIZE = lib.VN_VRING_MAX_NUM
F_RING_PACKED = 1 << lib.VN_F_RING_PACKED
# A packed ring's vring base (vhost-user SET/GET_VRING_BASE): the avail position
# (slot | wrap counter << 15) in the low 16 bits, the used position in the high 16
# (QEMU's layout; a frontend that sends 16 bits has nothing above them).
PACKED_POS_BITS = 16
PACKED_POS_MASK = (1 << PACKED_POS_BITS) - 1
# The virtio_net_hdr sizes: legacy, with num_buffers (VERSION_1/MRG_RXBUF), with hash report.
HDR_SIZES = (10, 12, 20)
# What RxPath.fill returns when the guest has no (or too few) buffers: wait for a kick.
NO_BUFFERS = -errno.ENOBUFS
# Every offload a TxConfig may allow: Linux's TUN_F_* bits.
TUN_F_ALL = (lib.VN_TUN_F_CSUM | lib.VN_TUN_F_TSO4 | lib.VN_TUN_F_TSO6 | lib.VN_TUN_F_TSO_ECN
             | lib.VN_TUN_F_UFO | lib.VN_TUN_F_USO4 | lib.VN_TUN_F_USO6)
# Default batch: chains per TX call, packets per RX call.
DEFAULT_BUDGET = 64


class RingError(enum.IntEnum):
    """Why a queue broke (enum vn_ring_err): the ring itself is inconsistent."""

    AVAIL_IDX = lib.VN_RING_AVAIL_IDX
    HEAD = lib.VN_RING_HEAD
    NEXT = lib.VN_RING_NEXT
    LOOP = lib.VN_RING_LOOP
    INDIRECT_FEATURE = lib.VN_RING_INDIRECT_FEATURE
    INDIRECT_NEXT = lib.VN_RING_INDIRECT_NEXT
    INDIRECT_LEN = lib.VN_RING_INDIRECT_LEN
    INDIRECT_NESTED = lib.VN_RING_INDIRECT_NESTED
    INDIRECT_ADDR = lib.VN_RING_INDIRECT_ADDR


class DropReason(enum.IntEnum):
    """The data path's own drop reasons (enum vn_drop); below them, offload.Reason."""

    HDR_SHORT = lib.VN_DROP_HDR_SHORT
    TOO_LONG = lib.VN_DROP_TOO_LONG
    DESC_ADDR = lib.VN_DROP_DESC_ADDR
    DIRECTION = lib.VN_DROP_DIRECTION
    TOO_MANY_IOV = lib.VN_DROP_TOO_MANY_IOV
    TAP_WRITE = lib.VN_DROP_TAP_WRITE
    TX_PARTIAL = lib.VN_DROP_TX_PARTIAL
    RX_TRUNCATED = lib.VN_DROP_RX_TRUNCATED
    RX_NO_BUFFERS = lib.VN_DROP_RX_NO_BUFFERS
    RX_BUF_SHORT = lib.VN_DROP_RX_BUF_SHORT
    LOCKED_SRC = lib.VN_DROP_LOCKED_SRC
    LOCKED_ARP = lib.VN_DROP_LOCKED_ARP
    LOCKED_DST = lib.VN_DROP_LOCKED_DST
    INTERCEPT_FULL = lib.VN_DROP_INTERCEPT_FULL
    INTERCEPT_LONG = lib.VN_DROP_INTERCEPT_LONG


def _drop_names() -> dict[int, str]:
    """Index in vn_stats.drops -> name: the header reasons, then the data path's."""
    names = {int(r): f"bad_{r.name.lower()}" for r in Reason}
    names.update({int(r): r.name.lower() for r in DropReason})
    return names


DROP_NAMES = _drop_names()


class RingBroken(RuntimeError):
    """The guest corrupted a ring: stop the queue and reset the device."""

    def __init__(self, reason: RingError):
        super().__init__(f"virtqueue broken: {reason.name}")
        self.reason = reason


@dataclass(frozen=True)
class MemRegion:
    """One region of guest RAM as SET_MEM_TABLE / ADD_MEM_REG describe it."""

    fd: int
    gpa: int            # guest physical address
    size: int
    uaddr: int          # the VMM's virtual address (what SET_VRING_ADDR uses)
    mmap_offset: int


@dataclass(frozen=True)
class MappedRegion:
    """A region as mapped: `sealed` is False when the VMM could still shrink it."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int
    sealed: bool


def lost_ram_pages() -> int:
    """Guest RAM pages that vanished under this process so far (SIGBUS caught).

    A VMM that truncates the file behind its RAM would make our next access
    to it kill the process; csrc/vn_mem.c replaces such pages with zero pages
    instead and counts them.  When this grows, drop that VMM.
    """
    return int(lib.vn_mem_sigbus_pages())


class GuestMemory:
    """The guest memory table: regions mapped from the VMM's fds."""

    def __init__(self) -> None:
        self.c = ffi.new("struct vn_mem *")
        lib.vn_mem_init(self.c)
        # Bumped on every change so that rings translated before it are refused.
        self.generation = 0

    def map(self, regions: Iterable[MemRegion]) -> None:
        """Map every region (SET_MEM_TABLE); all or none.  Every fd is closed."""
        regions = list(regions)
        done: list[MemRegion] = []
        try:
            for r in regions:
                self._map_one(r)
                done.append(r)
        except BaseException:
            for r in done:
                lib.vn_mem_unmap_region(self.c, r.gpa, r.size)
            raise
        finally:
            for r in regions:
                os.close(r.fd)
            self.generation += 1

    def add(self, region: MemRegion) -> None:
        """Map one more region (ADD_MEM_REG); its fd is closed."""
        try:
            self._map_one(region)
        finally:
            os.close(region.fd)
            self.generation += 1

    def _map_one(self, r: MemRegion) -> None:
        for name in ("gpa", "size", "uaddr", "mmap_offset"):
            if not 0 <= getattr(r, name) < 1 << 64:
                raise ValueError(f"{name} {getattr(r, name):#x} is not a 64-bit value")
        check_errno(lib.vn_mem_map_region(self.c, r.fd, r.gpa, r.size, r.uaddr, r.mmap_offset),
                    f"map guest region gpa={r.gpa:#x} size={r.size:#x}")
        if not self.c.regions[self._index(r.gpa)].sealed:
            log.warning("guest region gpa=%#x is not sealed against shrinking: if the VMM "
                        "truncates it, the lost pages read as zeros and the VMM is dropped",
                        r.gpa)

    def _index(self, gpa: int) -> int:
        for i in range(self.c.nregions):
            if self.c.regions[i].gpa == gpa:
                return i
        raise KeyError(gpa)

    def remove(self, gpa: int, size: int) -> None:
        """Unmap the region starting at `gpa` of `size` bytes (REM_MEM_REG)."""
        self.generation += 1
        check_errno(lib.vn_mem_unmap_region(self.c, gpa, size),
                    f"unmap guest region gpa={gpa:#x}")

    def unmap_all(self) -> None:
        """Unmap everything (new SET_MEM_TABLE, device reset, exit)."""
        self.generation += 1
        lib.vn_mem_unmap_all(self.c)

    close = unmap_all

    @property
    def regions(self) -> list[MappedRegion]:
        """The mapped regions, sorted by guest physical address."""
        return [MappedRegion(r.gpa, r.size, r.uaddr, r.mmap_offset, bool(r.sealed))
                for r in (self.c.regions[i] for i in range(self.c.nregions))]

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmap_all()


class Vring:
    """One virtqueue, split or packed (vhost-user SET_VRING_NUM/BASE/ADDR/KICK/CALL).

    The ring type follows VIRTIO_F_RING_PACKED in the features given to
    `setup`.  For a packed ring, desc/avail/used are the descriptor ring and
    the driver and device event suppression areas, `base` and what `reset`
    returns carry the avail wrap counter in bit 15, and the index properties
    count descriptor chains (see csrc/vn_vpacked.c).
    """

    def __init__(self) -> None:
        vq = lib.vn_vring_new()
        if vq == ffi.NULL:
            raise MemoryError("vn_vring_new")
        self.c = ffi.gc(vq, lib.vn_vring_free)
        self.mem_generation = -1

    def setup(self, mem: GuestMemory, num: int, desc: int, avail: int, used: int,
              base: int = 0, features: int = 0) -> None:
        """Start the queue: addresses are the VMM's (uaddr), `base` from SET_VRING_BASE.

        Packed rings: base is the avail position (slot | wrap counter << 15),
        optionally with the used position in bits 16..31; the used position
        starts at the avail one (what vionet reports at a stop: every chain it
        consumed it returned).
        """
        packed = bool(features & F_RING_PACKED)
        if not 0 <= base <= (0xFFFF_FFFF if packed else 0xFFFF):
            raise ValueError(f"vring base {base} is not a {'packed' if packed else '16-bit'}"
                             " ring position")
        base &= PACKED_POS_MASK
        for name, v in (("desc", desc), ("avail", avail), ("used", used),
                        ("features", features)):
            if not 0 <= v < 1 << 64:
                raise ValueError(f"{name} {v:#x} is not a 64-bit value")
        if not 0 <= num <= MAX_QUEUE_SIZE:
            raise OSError(errno.EINVAL, f"queue size {num} outside 0..{MAX_QUEUE_SIZE}")
        check_errno(lib.vn_vring_setup(self.c, mem.c, num, desc, avail, used, base, features),
                    "vring setup")
        self.mem_generation = mem.generation

    def translate(self, mem: GuestMemory) -> None:
        """Re-translate the ring addresses after the memory table changed."""
        check_errno(lib.vn_vring_translate(self.c, mem.c), "vring translate")
        self.mem_generation = mem.generation

    def reset(self) -> int:
        """Stop the queue (GET_VRING_BASE); return the next avail index.

        Packed: the next chain's slot | avail wrap counter << 15, repeated in
        bits 16..31 as the used position (nothing is in flight after a stop).
        """
        self.mem_generation = -1
        packed = self.packed
        base = int(lib.vn_vring_reset(self.c))
        return base | base << PACKED_POS_BITS if packed else base

    @property
    def ready(self) -> bool:
        return bool(self.c.ready)

    @property
    def num(self) -> int:
        return int(self.c.num)

    @property
    def packed(self) -> bool:
        """A packed ring (VIRTIO_F_RING_PACKED), while set up."""
        return bool(self.c.packed)

    @property
    def last_avail_idx(self) -> int:
        return int(self.c.last_avail_idx)

    @property
    def last_used_idx(self) -> int:
        return int(self.c.last_used_idx)

    @property
    def avail_seen(self) -> int:
        """avail->idx as last read (what the last batch looked at)."""
        return int(self.c.avail_idx_shadow)

    @property
    def broken(self) -> RingError | None:
        return RingError(self.c.broken) if self.c.broken else None

    @property
    def kick_fd(self) -> int:
        """The guest's kick eventfd (not used by C; the event loop waits on it)."""
        return int(self.c.kick_fd)

    @kick_fd.setter
    def kick_fd(self, fd: int) -> None:
        self.c.kick_fd = fd

    @property
    def call_fd(self) -> int:
        """The eventfd C writes to notify the guest; -1 for none."""
        return int(self.c.call_fd)

    @call_fd.setter
    def call_fd(self, fd: int) -> None:
        self.c.call_fd = fd

    def notify_enable(self) -> bool:
        """Ask the guest to kick; True when work arrived meanwhile (do not sleep)."""
        rc = lib.vn_vring_notify_enable(self.c)
        if rc < 0:
            self._raise_broken()
        return rc > 0

    def notify_disable(self) -> None:
        """Ask the guest not to kick (we are polling)."""
        lib.vn_vring_notify_disable(self.c)

    def avail_count(self) -> int:
        """Chains available now."""
        rc = lib.vn_vring_avail_count(self.c)
        if rc < 0:
            self._raise_broken()
        return int(rc)

    def _raise_broken(self) -> None:
        if self.c.broken:
            raise RingBroken(RingError(self.c.broken))
        raise OSError(errno.EINVAL, "vring not set up")


class Stats:
    """Counters of one queue (struct vn_stats), written by C."""

    def __init__(self) -> None:
        self.c = ffi.new("struct vn_stats *")

    def reset(self) -> None:
        ffi.memmove(self.c, bytes(ffi.sizeof("struct vn_stats")), ffi.sizeof("struct vn_stats"))

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """Every counter by name; `drops` and `ring_errors` by reason."""
        out: dict[str, int | dict[str, int]] = {}
        for name, _ in ffi.typeof("struct vn_stats").fields:
            if name == "drops":
                out[name] = {n: int(self.c.drops[i]) for i, n in DROP_NAMES.items()}
            elif name == "ring_errors":
                out[name] = {r.name.lower(): int(self.c.ring_errors[r]) for r in RingError}
            else:
                out[name] = int(getattr(self.c, name))
        return out


class PacketRing:
    """A ring of whole frames between two threads (csrc/vn_pktring.c).

    One producer and one consumer: TX -> intercept ring -> the DHCP thread,
    the DHCP thread -> inject ring -> RX.  `fd` is an eventfd that every put
    signals, for the consumer's poll(2); read it (`clear`) before draining.
    """

    SLOTS = lib.VN_PKTRING_SLOTS
    SLOT_SIZE = lib.VN_PKTRING_SLOT_SZ

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.c = ffi.new("struct vn_pktring *")
        lib.vn_pktring_init(self.c, self.fd)
        self._buf = ffi.new("uint8_t[]", self.SLOT_SIZE)

    def put(self, frame: bytes) -> bool:
        """Queue a frame; False when the ring is full."""
        if len(frame) > self.SLOT_SIZE:
            raise ValueError(f"frame of {len(frame)} bytes, a slot holds {self.SLOT_SIZE}")
        rc = lib.vn_pktring_put(self.c, frame, len(frame))
        if rc == -errno.ENOBUFS:
            return False
        check_errno(rc, "vn_pktring_put")
        return True

    def get(self) -> bytes | None:
        """The oldest frame, or None when the ring is empty."""
        rc = lib.vn_pktring_get(self.c, self._buf, self.SLOT_SIZE)
        if rc == -errno.EAGAIN:
            return None
        check_errno(rc, "vn_pktring_get")
        return bytes(ffi.buffer(self._buf, rc))

    def drain(self, limit: int = SLOTS) -> list[bytes]:
        """Up to `limit` frames, oldest first."""
        out = []
        while len(out) < limit and (f := self.get()) is not None:
            out.append(f)
        return out

    def clear(self) -> None:
        """Reset the eventfd counter (the consumer, before draining)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def __len__(self) -> int:
        return int(lib.vn_pktring_count(self.c))

    def close(self) -> None:
        """Close the eventfd; the ring must not be in use by any path."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.c.efd = -1


ETH_ALEN = 6


def _check_lladdr(lladdr: bytes | None, locked: bool) -> None:
    if lladdr is not None and len(lladdr) != ETH_ALEN:
        raise ValueError(f"lladdr of {len(lladdr)} bytes, not {ETH_ALEN}")
    if locked and lladdr is None:
        raise ValueError("a locked lladdr needs the lladdr")


class TxPlanLike(Protocol):
    """What vmdnet.tun.caps.TxPlan provides (kept structural: no import of the tun layer)."""

    vnet_hdr: bool
    csum: bool
    gso_types: frozenset[int]
    ecn: bool


# virtio_net_hdr gso_type -> the TUN_F_* a tap needs to take it.
_GSO_TUN_F = {1: lib.VN_TUN_F_TSO4, 4: lib.VN_TUN_F_TSO6, 3: lib.VN_TUN_F_UFO,
              5: lib.VN_TUN_F_USO4 | lib.VN_TUN_F_USO6}


def _check_hdr_sz(hdr_sz: int) -> None:
    if hdr_sz not in HDR_SIZES:
        raise ValueError(f"virtio_net_hdr size {hdr_sz}, not one of {HDR_SIZES}")


@dataclass(frozen=True)
class TxConfig:
    """What the TX path may hand the tap.

    `tap_has_vnet_hdr` means IFF_VNET_HDR with TUNSETVNETHDRSZ == hdr_sz.
    `tap_offloads` is a TUN_F_* mask of what the tap may be given on write;
    every other offload is completed in C.  `discard` drops after all the
    work but the write (benchmarks).  `locked`: frames whose Ethernet source
    or ARP sender is not `lladdr` are dropped and counted.
    """

    hdr_sz: int = 12
    tap_has_vnet_hdr: bool = True
    tap_offloads: int = TUN_F_ALL
    discard: bool = False
    lladdr: bytes | None = None
    locked: bool = False

    def __post_init__(self) -> None:
        _check_hdr_sz(self.hdr_sz)
        _check_lladdr(self.lladdr, self.locked)
        if self.tap_offloads & ~TUN_F_ALL:
            raise ValueError(f"unknown TUN_F_* bits {self.tap_offloads & ~TUN_F_ALL:#x}")

    @classmethod
    def from_plan(cls, plan: TxPlanLike, hdr_sz: int, discard: bool = False,
                  lladdr: bytes | None = None, locked: bool = False) -> TxConfig:
        """From vmdnet.tun.caps.tx_plan()'s answer."""
        offloads = 0
        if plan.vnet_hdr and plan.csum:
            offloads = lib.VN_TUN_F_CSUM
            for t in plan.gso_types:
                offloads |= _GSO_TUN_F.get(t, 0)
            if plan.ecn:
                offloads |= lib.VN_TUN_F_TSO_ECN
        return cls(hdr_sz=hdr_sz, tap_has_vnet_hdr=plan.vnet_hdr, tap_offloads=offloads,
                   discard=discard, lladdr=lladdr, locked=locked)


@dataclass(frozen=True)
class RxConfig:
    """How the RX path fills guest buffers.

    `max_pkt` is the largest packet the tap hands us, header included (0: a
    maximal GSO packet); with MRG_RXBUF the tap reads straight into guest
    memory once that much buffer space is posted.  `locked`: unicast frames
    not addressed to `lladdr` are dropped and counted.
    """

    hdr_sz: int = 12
    tap_has_vnet_hdr: bool = True
    mrg_rxbuf: bool = True
    guest_csum: bool = False
    max_pkt: int = 0
    lladdr: bytes | None = None
    locked: bool = False

    def __post_init__(self) -> None:
        _check_hdr_sz(self.hdr_sz)
        _check_lladdr(self.lladdr, self.locked)
        if self.mrg_rxbuf and self.hdr_sz < 12:
            raise ValueError("MRG_RXBUF needs the 12-byte header (num_buffers)")
        top = self.hdr_sz + lib.VN_MAX_FRAME
        if self.max_pkt and not self.hdr_sz + 14 <= self.max_pkt <= top:
            raise ValueError(f"max_pkt {self.max_pkt} outside {self.hdr_sz + 14}..{top}")


def _set_lladdr(cfg_c, lladdr: bytes | None, locked: bool) -> None:
    """The lock fields of a struct vn_txcfg / vn_rxcfg."""
    ffi.memmove(cfg_c.lladdr, lladdr or bytes(ETH_ALEN), ETH_ALEN)
    cfg_c.locked = int(locked)


class _Path:
    """A queue with its memory, tap and counters."""

    def __init__(self, vring: Vring, mem: GuestMemory, tap_fd: int,
                 stats: Stats | None = None) -> None:
        self.vring = vring
        self.mem = mem
        self.tap_fd = tap_fd
        self.stats = stats or Stats()

    def _check(self, rc: int, what: str) -> int:
        if rc >= 0:
            return rc
        if rc == -errno.EIO and self.vring.c.broken:
            raise RingBroken(RingError(self.vring.c.broken))
        return check_errno(rc, what)

    def _check_generation(self) -> None:
        if self.vring.mem_generation != self.mem.generation:
            raise OSError(errno.ESTALE, "guest memory changed since the ring was set up")


class TxPath(_Path):
    """Guest TX: drain a queue's chains to the tap."""

    def __init__(self, vring: Vring, mem: GuestMemory, tap_fd: int, cfg: TxConfig,
                 stats: Stats | None = None) -> None:
        super().__init__(vring, mem, tap_fd, stats)
        self.cfg_c = ffi.new("struct vn_txcfg *")
        self.intercept: PacketRing | None = None
        self.configure(cfg)

    def configure(self, cfg: TxConfig) -> None:
        """Apply a new configuration (features renegotiated); between batches only."""
        self.cfg = cfg
        self.cfg_c.hdr_sz = cfg.hdr_sz
        self.cfg_c.tap_has_vnet_hdr = int(cfg.tap_has_vnet_hdr)
        self.cfg_c.tap_offloads = cfg.tap_offloads if cfg.tap_has_vnet_hdr else 0
        self.cfg_c.discard = int(cfg.discard)
        _set_lladdr(self.cfg_c, cfg.lladdr, cfg.locked)

    def set_intercept(self, ring: PacketRing | None) -> None:
        """Put guest DHCP (IPv4/UDP to port 67) into `ring` instead of the tap; None: off.

        Between batches only; the path keeps a reference so the ring outlives
        every batch that uses it.
        """
        self.intercept = ring
        self.cfg_c.intercept = ring.c if ring is not None else ffi.NULL
        self.cfg_c.intercept_dhcp = int(ring is not None)

    def drain(self, budget: int = DEFAULT_BUDGET) -> int:
        """Send up to `budget` chains; return how many were consumed (sent or dropped)."""
        self._check_generation()
        rc = lib.vn_tx_drain(self.vring.c, self.mem.c, self.tap_fd, self.cfg_c, self.stats.c,
                             budget)
        return self._check(rc, "vn_tx_drain")


class RxPath(_Path):
    """Guest RX: fill a queue's buffers from the tap."""

    def __init__(self, vring: Vring, mem: GuestMemory, tap_fd: int, cfg: RxConfig,
                 stats: Stats | None = None) -> None:
        super().__init__(vring, mem, tap_fd, stats)
        self.cfg_c = ffi.new("struct vn_rxcfg *")
        self.coalescer: Coalescer | None = None
        self.inject: PacketRing | None = None
        self.configure(cfg)

    def configure(self, cfg: RxConfig) -> None:
        """Apply a new configuration (features renegotiated); between batches only."""
        self.cfg = cfg
        self.cfg_c.hdr_sz = cfg.hdr_sz
        self.cfg_c.tap_has_vnet_hdr = int(cfg.tap_has_vnet_hdr)
        self.cfg_c.mrg_rxbuf = int(cfg.mrg_rxbuf)
        self.cfg_c.guest_csum = int(cfg.guest_csum)
        self.cfg_c.max_pkt = cfg.max_pkt
        _set_lladdr(self.cfg_c, cfg.lladdr, cfg.locked)
        if not cfg.mrg_rxbuf:
            self.set_coalescer(None)

    def set_inject(self, ring: PacketRing | None) -> None:
        """Deliver frames from `ring` to the guest before the tap's; None: off.

        Between batches only; the caller wakes the queue's thread through
        `ring.fd` (QueueWorker polls it).
        """
        self.inject = ring
        self.cfg_c.inject = ring.c if ring is not None else ffi.NULL

    def fill(self, budget: int = DEFAULT_BUDGET) -> int:
        """Deliver up to `budget` packets; NO_BUFFERS when the guest has none to offer.

        NO_BUFFERS means nothing was read (or the packet that did not fit is
        parked until more buffers come): wait for a kick on the RX queue, and
        `discard()` if none comes.
        """
        self._check_generation()
        rc = lib.vn_rx_fill(self.vring.c, self.mem.c, self.tap_fd, self.cfg_c, self.stats.c,
                            budget)
        if rc == NO_BUFFERS:
            return NO_BUFFERS
        return self._check(rc, "vn_rx_fill")

    def discard(self, budget: int = DEFAULT_BUDGET) -> int:
        """Drop the parked packet and up to `budget` waiting on the tap; return how many."""
        return self._check(lib.vn_rx_discard(self.vring.c, self.tap_fd, self.stats.c, budget),
                           "vn_rx_discard")

    def set_coalescer(self, coalescer: Coalescer | None) -> None:
        """Coalesce received TCP for the guest (needs MRG_RXBUF); None: off.

        Between batches only; the path keeps a reference so the C object
        outlives every batch that uses it.
        """
        if coalescer is not None and not self.cfg.mrg_rxbuf:
            raise ValueError("receive coalescing needs MRG_RXBUF")
        self.coalescer = coalescer
        self.cfg_c.rsc = coalescer._r if coalescer is not None else ffi.NULL

    def flush_coalesced(self, expired_only: bool = False) -> int:
        """Deliver what the coalescer holds (all, or what is due); return units delivered."""
        if self.coalescer is None:
            return 0
        self._check_generation()
        rc = lib.vn_rx_rsc_flush(self.vring.c, self.mem.c, self.cfg_c, self.stats.c,
                                 int(expired_only))
        return self._check(rc, "vn_rx_rsc_flush")

    def coalesce_wait_ms(self) -> int | None:
        """Milliseconds until held data is due (poll(2) granularity), None if none held."""
        if self.coalescer is None:
            return None
        deadline = self.coalescer.deadline()
        if deadline is None:
            return None
        return max(0, -(-(deadline - time.monotonic_ns()) // 1_000_000))

    @property
    def parked_len(self) -> int:
        """Length (header included) of the packet waiting for buffers, 0 if none."""
        return int(lib.vn_rx_parked_len(self.vring.c))
