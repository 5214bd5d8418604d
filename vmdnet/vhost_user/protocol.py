"""vhost-user wire format: request numbers, flags, protocol features, payload layouts.

Data only (plus pack/unpack of the fixed layouts); framing lives in codec.py and
state in backend.py.  Source: QEMU docs/interop/vhost-user.rst ("Message
Specification", "Front-end message types", "Protocol features").

A message is a 12-byte header { u32 request; u32 flags; u32 size; } followed by
`size` payload bytes, all in the machine's native byte order.  File descriptors
travel as SCM_RIGHTS ancillary data with the message.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from vmdnet.virtio import virtqueue


class VhostUserError(Exception):
    """Any protocol violation by the peer (the only exception the codec and backend raise
    for bad input).  The connection cannot continue: the caller closes it.

    `events` holds the backend events of the messages handled before the bad one, so
    the device can still act on them (e.g. stop a ring that had just started).
    """

    def __init__(self, message: str, events: list | None = None) -> None:
        super().__init__(message)
        self.events: list = events if events is not None else []


class Request(enum.IntEnum):
    """Front-end request numbers (vhost-user.rst, "Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


def request_name(request: int) -> str:
    """"VHOST_USER_GET_FEATURES" style name for logs; "VHOST_USER_unknown(N)" otherwise."""
    try:
        return "VHOST_USER_" + Request(request).name
    except ValueError:
        return f"VHOST_USER_unknown({request})"


class ProtocolFeature(enum.IntEnum):
    """Protocol feature bit numbers (vhost-user.rst, "Protocol features")."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


def protocol_feature_names(bits: int) -> list[str]:
    """Names of the protocol feature bits set in `bits` (unknown ones as "bitNN")."""
    out = []
    for n in range(64):
        if bits >> n & 1:
            try:
                out.append(ProtocolFeature(n).name)
            except ValueError:
                out.append(f"bit{n}")
    return out


# --- header ---
HEADER = struct.Struct("=III")  # request, flags, size; native byte order
HEADER_SIZE = HEADER.size
VHOST_USER_VERSION = 0x1
VHOST_USER_VERSION_MASK = 0x3
VHOST_USER_REPLY_MASK = 0x4
VHOST_USER_NEED_REPLY_MASK = 0x8
# Flag bits a front-end may set on a request; any other bit is refused.
REQUEST_FLAGS_ALLOWED = VHOST_USER_VERSION_MASK | VHOST_USER_NEED_REPLY_MASK

# --- payloads ---
U64 = struct.Struct("=Q")
VRING_STATE = struct.Struct("=II")  # index, num
VRING_ADDR = struct.Struct("=IIQQQQ")  # index, flags, desc, used, avail, log
MEMORY_HEADER = struct.Struct("=II")  # nregions, padding
MEMORY_REGION = struct.Struct("=QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
SINGLE_REGION = struct.Struct("=QQQQQ")  # padding + one region (ADD_MEM_REG / REM_MEM_REG)

# SET_VRING_KICK/CALL/ERR u64: bits 0-7 vring index, bit 8 "no fd" (poll instead).
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 0x100
# vhost_vring_addr.flags: the only defined bit asks for used-ring dirty logging.
VHOST_VRING_F_LOG = 0x1

# Regions in one SET_MEM_TABLE message: the message layout has room for 8
# (VHOST_MEMORY_BASELINE_NREGIONS); more need CONFIGURE_MEM_SLOTS + ADD_MEM_REG.
VHOST_MEMORY_BASELINE_NREGIONS = 8
# Memory slots we accept with CONFIGURE_MEM_SLOTS (reply to GET_MAX_MEM_SLOTS):
# enough for boot RAM plus DIMM hotplug, and it bounds the fds and mappings one
# hostile front-end can make us hold.
MAX_MEM_SLOTS = 32
# Largest payload of any request we accept (SET_MEM_TABLE with 8 regions, 264 B).
# A header announcing more is refused before any payload is buffered.
MAX_PAYLOAD_SIZE = MEMORY_HEADER.size + VHOST_MEMORY_BASELINE_NREGIONS * MEMORY_REGION.size
# Most fds any request carries (SET_MEM_TABLE: one per region); also the
# SCM_RIGHTS buffer size the socket adapter reserves per recvmsg.
MAX_FDS_PER_MESSAGE = VHOST_MEMORY_BASELINE_NREGIONS
# The vring index of KICK/CALL/ERR is 8 bits wide, so at most 256 vrings, 128 pairs.
MAX_QUEUE_PAIRS = 128
# NET_SET_MTU range: 68 is the IPv4 minimum MTU, 65535 the le16 virtio config field.
MTU_MIN = 68
MTU_MAX = 65535
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


@dataclass(frozen=True)
class VringState:
    """struct vhost_vring_state: a vring index and a number (size, base or enable)."""

    index: int
    num: int


@dataclass(frozen=True)
class VringFile:
    """The u64 of SET_VRING_KICK/CALL/ERR: vring index and whether no fd is sent."""

    index: int
    nofd: bool


@dataclass(frozen=True)
class VringAddr:
    """struct vhost_vring_addr: front-end user addresses of the ring areas."""

    index: int
    flags: int
    desc_user_addr: int
    used_user_addr: int
    avail_user_addr: int
    log_guest_addr: int


@dataclass(frozen=True)
class MemoryRegion:
    """One guest memory region; `fd` is mapped from offset 0 for mmap_offset + memory_size."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    fd: int = -1

    def contains_user(self, addr: int, size: int) -> bool:
        """True when [addr, addr + size) lies inside this region's user addresses."""
        return (self.userspace_addr <= addr
                and addr + size <= self.userspace_addr + self.memory_size)


def check_region(r: MemoryRegion) -> None:
    """Refuse an empty region or one whose address ranges wrap past 2**64."""
    if r.memory_size == 0:
        raise VhostUserError("memory region of size 0")
    for name, base in (("guest_phys_addr", r.guest_phys_addr),
                       ("userspace_addr", r.userspace_addr),
                       ("mmap_offset", r.mmap_offset)):
        if base + r.memory_size - 1 > U64_MAX:
            raise VhostUserError(f"memory region {name} {base:#x} + size "
                                 f"{r.memory_size:#x} overflows 64 bits")


def check_no_overlap(regions: list[MemoryRegion] | tuple[MemoryRegion, ...]) -> None:
    """Refuse regions that overlap in guest physical or in front-end user addresses."""
    for key in ("guest_phys_addr", "userspace_addr"):
        spans = sorted((getattr(r, key), r.memory_size) for r in regions)
        for (a, asize), (b, _) in zip(spans, spans[1:], strict=False):
            if a + asize > b:
                raise VhostUserError(f"memory regions overlap in {key} at {b:#x}")


def unpack_region(buf: bytes, offset: int) -> MemoryRegion:
    """One MEMORY_REGION at `offset` of `buf`, fd unset."""
    return MemoryRegion(*MEMORY_REGION.unpack_from(buf, offset))


def vring_areas(addr: VringAddr, num: int, packed: bool,
                event_idx: bool) -> tuple[tuple[str, int, int, int], ...]:
    """(name, user address, size, alignment) of the three areas of a vring."""
    if packed:
        sizes = virtqueue.packed_ring_areas(num)
        names = ("descriptor ring", "driver event area", "device event area")
    else:
        sizes = virtqueue.split_ring_areas(num, event_idx)
        names = ("descriptor table", "available ring", "used ring")
    addrs = (addr.desc_user_addr, addr.avail_user_addr, addr.used_user_addr)
    return tuple((n, a, s, al) for n, a, (s, al) in zip(names, addrs, sizes, strict=True))
