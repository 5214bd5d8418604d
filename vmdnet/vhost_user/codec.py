"""Sans-IO vhost-user codec, back-end side: bytes + fds in, typed messages out.

Rule for this file: no I/O besides closing fds the codec refuses; no device
state (that is backend.py).  It checks everything a message says about itself:
header, size for its request, field ranges, fd count; never what depends on
earlier messages.

Theory of operation
-------------------
feed(data, fds) appends bytes and parses every complete message into a queue;
next_message() pops them in order.  A bad message becomes a VhostUserError in
the queue at its place, so the messages before it are still handed out first;
after it the codec is broken and refuses more input.

File descriptors: SCM_RIGHTS fds are attached by the kernel to the first byte
of the sendmsg() that carried them, which is the first header byte of their
message.  So fds given with a chunk belong to the message that the chunk's
first byte belongs to (the one in progress, or the next one if the chunk starts
on a message boundary).  The socket adapter reads exactly bytes_wanted() bytes
per recvmsg so no chunk ever spans two messages; tests may feed whole streams
as long as fds ride with the first byte of their message.

Ownership: fds of a message in progress or queued belong to the codec
(close() closes them); a Message handed out owns its fds; fds of a refused
message are closed at once.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmdnet.vhost_user import protocol as P
from vmdnet.vhost_user.protocol import Request, VhostUserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One decoded front-end request.

    body by request: None (no payload), int (u64), VringState, VringFile,
    VringAddr, MemoryRegion (ADD/REM_MEM_REG) or tuple[MemoryRegion, ...]
    (SET_MEM_TABLE).  `fds` are the descriptors the receiver now owns (for
    SET_MEM_TABLE / ADD_MEM_REG the same ones as in the regions).
    """

    request: Request
    flags: int
    body: object
    fds: tuple[int, ...] = ()

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & P.VHOST_USER_NEED_REPLY_MASK)

    @property
    def name(self) -> str:
        return P.request_name(self.request)


@dataclass(frozen=True)
class Reply:
    """A back-end reply: the request it answers and its payload bytes."""

    request: int
    payload: bytes = b""

    @classmethod
    def u64(cls, request: int, value: int) -> Reply:
        return cls(request, P.U64.pack(value))

    @classmethod
    def vring_state(cls, request: int, index: int, num: int) -> Reply:
        return cls(request, P.VRING_STATE.pack(index, num))


def close_fds(fds: Sequence[int]) -> None:
    """Close every fd in `fds`; an already-closed one is logged, not raised."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError as e:
            log.warning("closing fd %d: %s", fd, e)


def _no_fds(fds: tuple[int, ...], what: str) -> None:
    if fds:
        raise VhostUserError(f"{what} carries {len(fds)} fds, takes none")


def _decode_none(p: bytes, fds: tuple[int, ...]) -> tuple[object, tuple[int, ...]]:
    _no_fds(fds, "message")
    return None, ()


def _decode_u64(p: bytes, fds: tuple[int, ...]) -> tuple[object, tuple[int, ...]]:
    _no_fds(fds, "u64 message")
    return P.U64.unpack(p)[0], ()


def _decode_state(p: bytes, fds: tuple[int, ...]) -> tuple[object, tuple[int, ...]]:
    _no_fds(fds, "vring state message")
    return P.VringState(*P.VRING_STATE.unpack(p)), ()


def _decode_file(p: bytes, fds: tuple[int, ...]) -> tuple[object, tuple[int, ...]]:
    (u64,) = P.U64.unpack(p)
    if u64 & ~(P.VHOST_USER_VRING_IDX_MASK | P.VHOST_USER_VRING_NOFD_MASK):
        raise VhostUserError(f"vring fd message u64 {u64:#x} has reserved bits set")
    nofd = bool(u64 & P.VHOST_USER_VRING_NOFD_MASK)
    if len(fds) != (0 if nofd else 1):
        raise VhostUserError(f"vring fd message with nofd={nofd} carries {len(fds)} fds")
    return P.VringFile(u64 & P.VHOST_USER_VRING_IDX_MASK, nofd), fds


def _decode_addr(p: bytes, fds: tuple[int, ...]) -> tuple[object, tuple[int, ...]]:
    _no_fds(fds, "vring address message")
    addr = P.VringAddr(*P.VRING_ADDR.unpack(p))
    if addr.flags & ~P.VHOST_VRING_F_LOG:
        raise VhostUserError(f"vring address flags {addr.flags:#x} unknown")
    return addr, ()


def _decode_mem_table(p: bytes, fds: tuple[int, ...]) -> tuple[object, tuple[int, ...]]:
    nregions, _padding = P.MEMORY_HEADER.unpack_from(p)
    if nregions * P.MEMORY_REGION.size + P.MEMORY_HEADER.size != len(p):
        raise VhostUserError(f"memory table says {nregions} regions in {len(p)} bytes")
    if nregions == 0:
        raise VhostUserError("memory table without regions")
    if len(fds) != nregions:
        raise VhostUserError(f"memory table of {nregions} regions carries {len(fds)} fds")
    regions = []
    for i, fd in enumerate(fds):
        r = P.unpack_region(p, P.MEMORY_HEADER.size + i * P.MEMORY_REGION.size)
        r = P.MemoryRegion(r.guest_phys_addr, r.memory_size, r.userspace_addr,
                           r.mmap_offset, fd)
        P.check_region(r)
        regions.append(r)
    P.check_no_overlap(regions)
    return tuple(regions), fds


def _decode_add_region(p: bytes, fds: tuple[int, ...]) -> tuple[object, tuple[int, ...]]:
    if len(fds) != 1:
        raise VhostUserError(f"ADD_MEM_REG carries {len(fds)} fds, takes exactly 1")
    r = P.unpack_region(p, 8)  # after the u64 padding
    r = P.MemoryRegion(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset,
                       fds[0])
    P.check_region(r)
    return r, fds


def _decode_rem_region(p: bytes, fds: tuple[int, ...]) -> tuple[object, tuple[int, ...]]:
    # The spec lets a back-end accept (and must then close) one stray fd here.
    if len(fds) > 1:
        raise VhostUserError(f"REM_MEM_REG carries {len(fds)} fds, takes at most 1")
    r = P.unpack_region(p, 8)
    P.check_region(r)
    close_fds(fds)
    return r, ()


Decoder = Callable[[bytes, tuple[int, ...]], tuple[object, tuple[int, ...]]]
_MEM_TABLE_SIZES = frozenset(P.MEMORY_HEADER.size + n * P.MEMORY_REGION.size
                             for n in range(1, P.VHOST_MEMORY_BASELINE_NREGIONS + 1))

# Requests the back-end understands: allowed payload sizes and decoder.  Anything
# else (logging, IOTLB, config space, postcopy, inflight, ...) is refused at the
# header, before its payload is buffered.
LAYOUTS: dict[Request, tuple[frozenset[int], Decoder]] = {
    Request.GET_FEATURES: (frozenset({0}), _decode_none),
    Request.SET_FEATURES: (frozenset({8}), _decode_u64),
    Request.SET_OWNER: (frozenset({0}), _decode_none),
    Request.RESET_OWNER: (frozenset({0}), _decode_none),
    Request.SET_MEM_TABLE: (_MEM_TABLE_SIZES, _decode_mem_table),
    Request.SET_VRING_NUM: (frozenset({8}), _decode_state),
    Request.SET_VRING_ADDR: (frozenset({P.VRING_ADDR.size}), _decode_addr),
    Request.SET_VRING_BASE: (frozenset({8}), _decode_state),
    Request.GET_VRING_BASE: (frozenset({8}), _decode_state),
    Request.SET_VRING_KICK: (frozenset({8}), _decode_file),
    Request.SET_VRING_CALL: (frozenset({8}), _decode_file),
    Request.SET_VRING_ERR: (frozenset({8}), _decode_file),
    Request.GET_PROTOCOL_FEATURES: (frozenset({0}), _decode_none),
    Request.SET_PROTOCOL_FEATURES: (frozenset({8}), _decode_u64),
    Request.GET_QUEUE_NUM: (frozenset({0}), _decode_none),
    Request.SET_VRING_ENABLE: (frozenset({8}), _decode_state),
    Request.NET_SET_MTU: (frozenset({8}), _decode_u64),
    Request.RESET_DEVICE: (frozenset({0}), _decode_none),
    Request.GET_MAX_MEM_SLOTS: (frozenset({0}), _decode_none),
    Request.ADD_MEM_REG: (frozenset({P.SINGLE_REGION.size}), _decode_add_region),
    Request.REM_MEM_REG: (frozenset({P.SINGLE_REGION.size}), _decode_rem_region),
}
assert max(max(s) for s, _ in LAYOUTS.values()) <= P.MAX_PAYLOAD_SIZE


def check_header(request: int, flags: int, size: int) -> Request:
    """Validate a request header; return the request as a Request."""
    if flags & P.VHOST_USER_VERSION_MASK != P.VHOST_USER_VERSION:
        raise VhostUserError(f"{P.request_name(request)}: version "
                             f"{flags & P.VHOST_USER_VERSION_MASK}, expected 1")
    if flags & ~P.REQUEST_FLAGS_ALLOWED:
        raise VhostUserError(f"{P.request_name(request)}: flags {flags:#x} not allowed")
    if size > P.MAX_PAYLOAD_SIZE:
        raise VhostUserError(f"{P.request_name(request)}: payload {size} B over the "
                             f"{P.MAX_PAYLOAD_SIZE} B limit")
    try:
        req = Request(request)
        sizes, _ = LAYOUTS[req]
    except (ValueError, KeyError):
        raise VhostUserError(f"{P.request_name(request)}: request not supported") from None
    if size not in sizes:
        raise VhostUserError(f"{P.request_name(request)}: payload size {size}, "
                             f"expected one of {sorted(sizes)}")
    return req


class Codec:
    """Frames and decodes the front-end's byte stream (see Theory of operation)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []  # fds of the message in progress
        self._queue: deque[Message | VhostUserError] = deque()
        self._broken: str | None = None

    def bytes_wanted(self) -> int:
        """Bytes that complete the current header or payload (always >= 1)."""
        if len(self._buf) < P.HEADER_SIZE:
            return P.HEADER_SIZE - len(self._buf)
        _, _, size = P.HEADER.unpack_from(self._buf)
        return P.HEADER_SIZE + size - len(self._buf)

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Take bytes and the fds that arrived with them; parse complete messages."""
        if self._broken is not None:
            close_fds(fds)
            raise VhostUserError(f"connection already failed: {self._broken}")
        self._fds.extend(fds)
        if len(self._fds) > P.MAX_FDS_PER_MESSAGE:
            self._fail(VhostUserError(f"{len(self._fds)} fds for one message, limit "
                                      f"{P.MAX_FDS_PER_MESSAGE}"))
            return
        self._buf += data
        self._parse()

    def next_message(self) -> Message | None:
        """The next complete message, None if none; raises the error queued at its place."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        if isinstance(item, VhostUserError):
            raise item
        return item

    def receive(self, data: bytes, fds: Sequence[int] = ()) -> list[Message]:
        """feed() then every complete message.  On error the messages of this call
        are dropped (their fds closed) and VhostUserError is raised."""
        out: list[Message] = []
        try:
            self.feed(data, fds)
            while (msg := self.next_message()) is not None:
                out.append(msg)
        except VhostUserError:
            for msg in out:
                close_fds(msg.fds)
            raise
        return out

    def send(self, reply: Reply) -> bytes:
        """Encode a reply: header with version and reply flag, then the payload."""
        flags = P.VHOST_USER_VERSION | P.VHOST_USER_REPLY_MASK
        return P.HEADER.pack(int(reply.request), flags, len(reply.payload)) + reply.payload

    def close(self) -> None:
        """Close every fd the codec still owns; the codec refuses input afterwards."""
        close_fds(self._fds)
        self._fds = []
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, Message):
                close_fds(item.fds)
        self._buf.clear()
        self._broken = self._broken or "codec closed"

    def _fail(self, err: VhostUserError) -> None:
        close_fds(self._fds)
        self._fds = []
        self._buf.clear()
        self._broken = str(err)
        self._queue.append(err)

    def _parse(self) -> None:
        pos = 0
        try:
            while len(self._buf) - pos >= P.HEADER_SIZE:
                request, flags, size = P.HEADER.unpack_from(self._buf, pos)
                req = check_header(request, flags, size)
                if len(self._buf) - pos < P.HEADER_SIZE + size:
                    break
                start = pos + P.HEADER_SIZE
                payload = bytes(self._buf[start:start + size])
                pos = start + size
                fds, self._fds = tuple(self._fds), []
                self._queue.append(self._decode(req, flags, payload, fds))
        except VhostUserError as e:
            self._fail(e)
            return
        del self._buf[:pos]

    def _decode(self, req: Request, flags: int, payload: bytes,
                fds: tuple[int, ...]) -> Message:
        _, decoder = LAYOUTS[req]
        try:
            body, kept = decoder(payload, fds)
        except VhostUserError as e:
            close_fds(fds)
            raise VhostUserError(f"{P.request_name(req)}: {e}") from None
        log.debug("received %s flags=%#x fds=%s", P.request_name(req), flags, kept)
        return Message(req, flags, body, kept)
