"""Front-end side message builders for the vhost-user tests, written from the spec
(vhost-user.rst) with struct directly, independent of vmdnet's codec; plus tests
that pin them to hand-written bytes.

Other vhost-user test files import this module (tests/unit is on sys.path there).
"""

from __future__ import annotations

import fcntl
import os
import struct

# Request numbers as listed in vhost-user.rst (literals on purpose).
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
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
NET_SET_MTU = 20
RESET_DEVICE = 34
GET_MAX_MEM_SLOTS = 36
ADD_MEM_REG = 37
REM_MEM_REG = 38

VERSION = 0x1
REPLY = 0x4
NEED_REPLY = 0x8
NOFD = 0x100

PF_MQ = 1 << 0
PF_REPLY_ACK = 1 << 3
PF_NET_MTU = 1 << 4
PF_RESET_DEVICE = 1 << 13
PF_CONFIGURE_MEM_SLOTS = 1 << 15

F_MRG_RXBUF = 1 << 15
F_EVENT_IDX = 1 << 29
F_PROTOCOL_FEATURES = 1 << 30
F_VERSION_1 = 1 << 32
F_RING_PACKED = 1 << 34

# A fake front-end address space: one 1 MiB region, rings inside it.
UVA = 0x7F00_0000_0000
GPA = 0
MEM_SIZE = 1 << 20
QUEUE_SIZE = 256


def frame(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    return struct.pack("=III", request, flags, len(payload)) + payload


def u64(request: int, value: int, flags: int = VERSION) -> bytes:
    return frame(request, struct.pack("=Q", value), flags)


def state(request: int, index: int, num: int, flags: int = VERSION) -> bytes:
    return frame(request, struct.pack("=II", index, num), flags)


def vring_addr(index: int, desc: int, used: int, avail: int, flags: int = 0,
               log: int = 0) -> bytes:
    return frame(SET_VRING_ADDR, struct.pack("=IIQQQQ", index, flags, desc, used, avail, log))


def mem_table(regions: list[tuple[int, int, int, int]], flags: int = VERSION,
              nregions: int | None = None) -> bytes:
    n = len(regions) if nregions is None else nregions
    body = struct.pack("=II", n, 0)
    for gpa, size, uva, off in regions:
        body += struct.pack("=QQQQ", gpa, size, uva, off)
    return frame(SET_MEM_TABLE, body, flags)


def single_region(request: int, gpa: int, size: int, uva: int, off: int = 0) -> bytes:
    return frame(request, struct.pack("=QQQQQ", 0, gpa, size, uva, off))


def ring_addrs(index: int) -> tuple[int, int, int]:
    """desc, used, avail user addresses of vring `index` inside the fake region."""
    base = UVA + 0x10000 * (index + 1)
    return base, base + 0x8000, base + 0x4000


def parse_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    while data:
        req, flags, size = struct.unpack_from("=III", data)
        out.append((req, flags, data[12:12 + size]))
        data = data[12 + size:]
    return out


def memfd(size: int = MEM_SIZE) -> int:
    fd = os.memfd_create("vn-test-guest-mem", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def open_fds() -> set[int]:
    """Open fds of this process (without the one listdir() itself used)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fcntl.fcntl(int(name), fcntl.F_GETFD)
        except OSError:
            continue
        out.add(int(name))
    return out


def handshake(queues: int = 1, features: int = F_VERSION_1 | F_MRG_RXBUF | F_PROTOCOL_FEATURES,
              protocol: int = PF_MQ | PF_REPLY_ACK) -> list[tuple[bytes, list[int]]]:
    """A QEMU-like start sequence as (message bytes, fds) pairs, with fresh fds."""
    seq: list[tuple[bytes, list[int]]] = [
        (frame(GET_FEATURES), []),
        (frame(GET_PROTOCOL_FEATURES), []),
        (u64(SET_PROTOCOL_FEATURES, protocol), []),
        (frame(GET_QUEUE_NUM), []),
        (frame(SET_OWNER), []),
        (u64(SET_FEATURES, features, VERSION | NEED_REPLY), []),
        (mem_table([(GPA, MEM_SIZE, UVA, 0)], VERSION | NEED_REPLY), [memfd()]),
    ]
    for i in range(2 * queues):
        desc, used, avail = ring_addrs(i)
        seq += [
            (state(SET_VRING_NUM, i, QUEUE_SIZE), []),
            (state(SET_VRING_BASE, i, 0), []),
            (vring_addr(i, desc, used, avail), []),
            (u64(SET_VRING_KICK, i), [eventfd()]),
            (u64(SET_VRING_CALL, i), [eventfd()]),
        ]
    for i in range(2 * queues):
        seq.append((state(SET_VRING_ENABLE, i, 1), []))
    return seq


def test_frame_layout_matches_spec() -> None:
    # request 1, flags version 1, size 0: three native u32.
    assert frame(GET_FEATURES) == struct.pack("=III", 1, 1, 0)
    assert u64(SET_FEATURES, 0x1_0000_8000) == (
        struct.pack("=III", 2, 1, 8) + (0x1_0000_8000).to_bytes(8, "little"))


def test_mem_table_layout() -> None:
    m = mem_table([(1, 2, 3, 4)])
    assert len(m) == 12 + 8 + 32
    # header (SET_MEM_TABLE, version, 40 bytes), nregions 1, padding 0, one region.
    assert struct.unpack_from("=IIIII", m) == (5, 1, 40, 1, 0)
    assert struct.unpack_from("=QQQQ", m, 20) == (1, 2, 3, 4)


def test_ring_addrs_inside_region() -> None:
    for i in range(4):
        for a in ring_addrs(i):
            assert UVA <= a and a + 0x4000 <= UVA + MEM_SIZE
