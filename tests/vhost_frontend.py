"""A minimal vhost-user front-end (the VMM's side) for tests that drive a real back-end.

It does what QEMU does for a virtio-net device, and lets a test break any of it:

- `GuestRam`: guest RAM in a memfd (sealed against shrinking like QEMU's
  memory-backend-memfd, or not), mapped here too so the test writes rings and
  buffers with struct.pack_into.  Guest physical address GPA_BASE maps to
  RAM offset 0; the front-end's "virtual address" of it (what SET_VRING_ADDR
  speaks in) is UADDR_BASE, a made-up number the back-end has to translate.
- `SplitRing`: one split virtqueue laid out in that RAM; write descriptors,
  publish heads, read the used ring.
- `Frontend`: one connection.  Messages are built from the project's own
  wire definitions (vmdnet.vhost_user.protocol: header, payload structs,
  request numbers); every request that has no reply of its own is sent with
  NEED_REPLY, so the back-end's u64 ack makes each step synchronous, and a
  back-end that drops the connection is seen as `BackendClosed` at the step
  it refused.  `start()` runs the whole well-behaved setup of a device.

Only the front-end logic is ours here; nothing is mocked: the back-end is
whatever listens on the socket.  Every wait is bounded (REPLY_TIMEOUT,
USED_TIMEOUT) so a hung back-end fails a test instead of hanging it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmdnet.vhost_user import protocol as P
from vmdnet.vhost_user.protocol import ProtocolFeature, Request
from vmdnet.virtio import features as vf
from vmdnet.virtio import virtqueue as vq

# Guest physical address of RAM offset 0 (a real guest's RAM starts at 0).
GPA_BASE = 0
# The front-end's virtual address of RAM offset 0: any 64-bit number works, the
# back-end only translates it; this one looks like a QEMU mmap.
UADDR_BASE = 0x7F12_3400_0000
RAM_SIZE = 2 << 20
# Ring areas: one 16 KiB slot per vring index (enough for num 256: desc 4 KiB,
# avail 518 B, used 2 KiB), then buffers.
RING_SLOT = 0x4000
AVAIL_OFF, USED_OFF = 0x1000, 0x2000
DATA_OFF = 0x10000
BUF_ALIGN = 64
DEFAULT_NUM = 256
# virtio-net vrings: receiveq1 is 0, transmitq1 is 1.
RX, TX = 0, 1
# How long the back-end may take to answer one request / to use a posted chain.
REPLY_TIMEOUT = 10.0
USED_TIMEOUT = 10.0
CONNECT_RETRY_S = 0.02
# Features a well-behaved front-end acks out of what is offered: EVENT_IDX is
# left out so notifications stay the simple flag kind, RING_PACKED because the
# rings built here are split ones.
NOT_ACKED = 1 << vf.VIRTIO_RING_F_EVENT_IDX | 1 << vf.VIRTIO_F_RING_PACKED
# Protocol features we use: REPLY_ACK (acks on every request we send).
PROTOCOL_FEATURES = 1 << ProtocolFeature.REPLY_ACK

DESC = struct.Struct("<QIHH")       # addr, len, flags, next
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")    # id, len


class BackendClosed(ConnectionError):
    """The back-end ended the connection (what it does on a protocol error)."""


class GuestRam:
    """Guest RAM: a memfd of `size` bytes, mapped here as well."""

    def __init__(self, size: int = RAM_SIZE, *, sealed: bool = True,
                 gpa: int = GPA_BASE, uaddr: int = UADDR_BASE) -> None:
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealed else 0)
        self.fd = os.memfd_create("vn-frontend-ram", flags)
        os.ftruncate(self.fd, size)
        if sealed:
            # As QEMU's memory-backend-memfd does by default (seal=on).
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.size = size
        self.gpa = gpa
        self.uaddr = uaddr
        self.sealed = sealed
        self.mm: mmap.mmap | None = mmap.mmap(self.fd, size)
        self._next = DATA_OFF

    def region(self, **override: int) -> tuple[P.MemoryRegion, int]:
        """This RAM as one memory table entry (fields may be overridden) and its fd."""
        fields = {"guest_phys_addr": self.gpa, "memory_size": self.size,
                  "userspace_addr": self.uaddr, "mmap_offset": 0}
        fields.update(override)
        return P.MemoryRegion(**fields), self.fd

    def alloc(self, n: int) -> int:
        """Offset of `n` fresh bytes for a buffer (bump allocator, wraps to DATA_OFF)."""
        n = max(n, 1)
        if self._next + n > self.size:
            self._next = DATA_OFF
        off = self._next
        self._next += (n + BUF_ALIGN - 1) & ~(BUF_ALIGN - 1)
        return off

    def put(self, data: bytes) -> int:
        """Copy `data` into fresh RAM; return its guest physical address."""
        off = self.alloc(len(data))
        self.write(off, data)
        return self.gpa + off

    def write(self, off: int, data: bytes) -> None:
        assert self.mm is not None, "RAM no longer mapped here"
        self.mm[off:off + len(data)] = data

    def read(self, off: int, n: int) -> bytes:
        assert self.mm is not None, "RAM no longer mapped here"
        return bytes(self.mm[off:off + n])

    def unmap_here(self) -> None:
        """Drop our own mapping (before shrinking the file: touching it would SIGBUS us)."""
        if self.mm is not None:
            self.mm.close()
            self.mm = None

    def close(self) -> None:
        self.unmap_here()
        os.close(self.fd)


@dataclass
class SplitRing:
    """A split virtqueue in `ram` at the slot of vring `index`, the driver's view."""

    ram: GuestRam
    index: int
    num: int = DEFAULT_NUM
    avail_idx: int = 0
    used_seen: int = 0
    next_desc: int = 0
    kick_fd: int = field(default=-1)
    call_fd: int = field(default=-1)

    def __post_init__(self) -> None:
        self.desc_off = self.index * RING_SLOT
        self.avail_off = self.desc_off + AVAIL_OFF
        self.used_off = self.desc_off + USED_OFF
        assert vq.desc_table_size(self.num) <= AVAIL_OFF
        assert vq.used_ring_size(self.num, True) <= RING_SLOT - USED_OFF

    # -- addresses --
    def uaddrs(self) -> tuple[int, int, int]:
        """(desc, avail, used) in the front-end's address space (SET_VRING_ADDR)."""
        u = self.ram.uaddr
        return u + self.desc_off, u + self.avail_off, u + self.used_off

    def clear(self) -> None:
        """Zero the three areas and our indices (what a driver does on reset)."""
        self.ram.write(self.desc_off, bytes(RING_SLOT))
        self.avail_idx = self.used_seen = self.next_desc = 0

    # -- driver side --
    def desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
             table_gpa: int | None = None) -> None:
        """Write descriptor `i` of the ring's table, or of an indirect table at `table_gpa`."""
        base = self.desc_off if table_gpa is None else table_gpa - self.ram.gpa
        self.ram.write(base + vq.VRING_DESC_SIZE * i, DESC.pack(addr, length, flags, nxt))

    def take_desc(self) -> int:
        i = self.next_desc
        self.next_desc = (self.next_desc + 1) % self.num
        return i

    def chain(self, pieces: Sequence[tuple[int, int, int]]) -> int:
        """Linked descriptors for (gpa, len, flags) pieces; return the head."""
        idx = [self.take_desc() for _ in pieces]
        for k, (gpa, ln, fl) in enumerate(pieces):
            last = k == len(pieces) - 1
            self.desc(idx[k], gpa, ln, fl | (0 if last else vq.VRING_DESC_F_NEXT),
                      0 if last else idx[k + 1])
        return idx[0]

    def publish(self, head: int) -> None:
        """Put `head` in the avail ring and move avail->idx past it."""
        slot = vq.VRING_AVAIL_OFF_RING + 2 * (self.avail_idx % self.num)
        self.ram.write(self.avail_off + slot, U16.pack(head))
        self.set_avail_idx((self.avail_idx + 1) & 0xFFFF)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx
        self.ram.write(self.avail_off + vq.VRING_AVAIL_OFF_IDX, U16.pack(idx))

    def post_tx(self, packet: bytes) -> int:
        """One TX chain of one descriptor holding `packet` (header + frame); returns the head."""
        head = self.chain([(self.ram.put(packet), len(packet), 0)])
        self.publish(head)
        return head

    def kick(self) -> None:
        os.eventfd_write(self.kick_fd, 1)

    def used_idx(self) -> int:
        return U16.unpack(self.ram.read(self.used_off + vq.VRING_USED_OFF_IDX, 2))[0]

    def used(self) -> list[tuple[int, int]]:
        """Used elements (id, len) published since the last call."""
        idx = self.used_idx()
        out = []
        while self.used_seen != idx:
            off = self.used_off + vq.VRING_USED_OFF_RING + 8 * (self.used_seen % self.num)
            out.append(USED_ELEM.unpack(self.ram.read(off, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def wait_used(self, count: int, timeout: float = USED_TIMEOUT) -> list[tuple[int, int]]:
        """Wait (on the call eventfd, bounded) until `count` more chains are used."""
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while True:
            got += self.used()
            if len(got) >= count:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"vring {self.index}: {len(got)} of {count} chains used "
                                   f"within {timeout}s")
            if select.select([self.call_fd], [], [], min(left, 0.2))[0]:
                os.eventfd_read(self.call_fd)

    def open_fds(self) -> None:
        """Fresh kick and call eventfds (the ones a connection passes)."""
        self.close_fds()
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def close_fds(self) -> None:
        for fd in (self.kick_fd, self.call_fd):
            if fd >= 0:
                os.close(fd)
        self.kick_fd = self.call_fd = -1


class Frontend:
    """One vhost-user connection to a back-end listening at `path`."""

    def __init__(self, path: str, timeout: float = REPLY_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        # A back-end serves one front-end at a time; with its backlog full, a
        # connect() with a timeout fails with EAGAIN at once: retry, bounded.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise
                time.sleep(CONNECT_RETRY_S)
        self.offered = 0
        self.acked = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire --
    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (),
             flags: int = P.VHOST_USER_VERSION) -> None:
        msg = P.HEADER.pack(int(request), flags, len(payload)) + payload
        try:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                        struct.pack(f"{len(fds)}i", *fds))]
                sent = self.sock.sendmsg([msg], anc)
                msg = msg[sent:]
            if msg:
                self.sock.sendall(msg)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise BackendClosed(f"{P.request_name(request)}: {e}") from None

    def _recv_exact(self, n: int, what: str) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise BackendClosed(f"back-end closed the connection ({what})")
            buf += chunk
        return buf

    def reply(self, request: int) -> bytes:
        """The reply to `request`: its payload."""
        name = P.request_name(request)
        req, flags, size = P.HEADER.unpack(self._recv_exact(P.HEADER_SIZE, name))
        if req != request or not flags & P.VHOST_USER_REPLY_MASK:
            raise AssertionError(f"{name}: got reply {P.request_name(req)} flags {flags:#x}")
        return self._recv_exact(size, name)

    def call(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> int:
        """A request without a reply of its own, sent with NEED_REPLY; returns the ack."""
        self.send(request, payload, fds, P.VHOST_USER_VERSION | P.VHOST_USER_NEED_REPLY_MASK)
        return P.U64.unpack(self.reply(request))[0]

    def get_u64(self, request: int) -> int:
        self.send(request)
        return P.U64.unpack(self.reply(request))[0]

    def expect_closed(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Wait (bounded) for the back-end to end the connection; anything it sends is ignored."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(4096):
                    return
            except ConnectionResetError:
                return
            except TimeoutError:
                continue
        raise AssertionError(f"back-end kept the connection open for {timeout}s")

    # -- requests --
    def set_u64(self, request: int, value: int) -> int:
        return self.call(request, P.U64.pack(value))

    def vring_state(self, request: int, index: int, num: int) -> int:
        return self.call(request, P.VRING_STATE.pack(index, num))

    def set_mem_table(self, regions: Sequence[tuple[P.MemoryRegion, int]],
                      nregions: int | None = None) -> int:
        """SET_MEM_TABLE with these (region, fd) pairs; `nregions` may lie."""
        n = len(regions) if nregions is None else nregions
        payload = P.MEMORY_HEADER.pack(n, 0) + b"".join(
            P.MEMORY_REGION.pack(r.guest_phys_addr, r.memory_size, r.userspace_addr,
                                 r.mmap_offset) for r, _ in regions)
        return self.call(Request.SET_MEM_TABLE, payload, [fd for _, fd in regions])

    def set_vring_addr(self, index: int, desc: int, avail: int, used: int) -> int:
        return self.call(Request.SET_VRING_ADDR, P.VRING_ADDR.pack(index, 0, desc, used, avail, 0))

    def set_vring_fd(self, request: int, index: int, fd: int) -> int:
        return self.call(request, P.U64.pack(index & P.VHOST_USER_VRING_IDX_MASK), [fd])

    def get_vring_base(self, index: int) -> int:
        self.send(Request.GET_VRING_BASE, P.VRING_STATE.pack(index, 0))
        return P.VRING_STATE.unpack(self.reply(Request.GET_VRING_BASE))[1]

    # -- whole sequences --
    def negotiate(self, drop: int = NOT_ACKED) -> int:
        """SET_OWNER, features and protocol features as QEMU orders them; returns the acks."""
        self.call(Request.SET_OWNER)
        self.offered = self.get_u64(Request.GET_FEATURES)
        proto = self.get_u64(Request.GET_PROTOCOL_FEATURES)
        assert proto & PROTOCOL_FEATURES == PROTOCOL_FEATURES, hex(proto)
        self.set_u64(Request.SET_PROTOCOL_FEATURES, PROTOCOL_FEATURES)
        self.acked = self.offered & ~drop
        self.set_u64(Request.SET_FEATURES, self.acked)
        return self.acked

    def start_ring(self, ring: SplitRing, base: int = 0) -> None:
        """SET_VRING_NUM/BASE/ADDR/CALL/KICK/ENABLE for a cleared ring with fresh eventfds."""
        ring.clear()
        ring.open_fds()
        self.vring_state(Request.SET_VRING_NUM, ring.index, ring.num)
        self.vring_state(Request.SET_VRING_BASE, ring.index, base)
        self.set_vring_addr(ring.index, *ring.uaddrs())
        self.set_vring_fd(Request.SET_VRING_CALL, ring.index, ring.call_fd)
        self.set_vring_fd(Request.SET_VRING_KICK, ring.index, ring.kick_fd)
        self.vring_state(Request.SET_VRING_ENABLE, ring.index, 1)

    def start(self, ram: GuestRam, rings: Sequence[SplitRing], drop: int = NOT_ACKED) -> None:
        """The whole well-behaved device setup: features, memory, every ring."""
        self.negotiate(drop)
        self.set_mem_table([ram.region()])
        for ring in rings:
            self.start_ring(ring)

    def restart_ring(self, ring: SplitRing) -> int:
        """Stop a ring (GET_VRING_BASE) and set it up again from scratch; returns the base."""
        base = self.get_vring_base(ring.index)
        self.start_ring(ring)
        return base
