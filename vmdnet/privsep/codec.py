"""Sans-IO codec for the messages between vmdnetd's parent and its vionet children.

Rule for this file: bytes and fds in, typed messages out (and back); no I/O
except closing fds the codec refuses; no process state.  Every field of every
frame is checked against the tables below; anything else is a PrivsepError.

Who talks to whom, and what each side accepts
---------------------------------------------
    peer      receives from   message types it accepts
    PARENT    VIONET          TAP_SET_OFFLOAD, TAP_SET_VNET_HDR_SZ, STATS
    VIONET    PARENT          RESULT, STATS_REQUEST, LOG_VERBOSE, VHOST_USER_FD,
                              VIONET_TAP

(The table is ACCEPTS below; the encoder refuses to build a frame its peer
would refuse, so a bug shows up at the sender.)

Frame layout (version 1, network byte order, 16 bytes, then the payload)
-----------------------------------------------------------------------
    u8  version    FRAME_VERSION
    u8  flags      FLAG_FD: exactly one fd rides with this frame (SCM_RIGHTS)
    u16 type       MsgType
    u32 length     payload bytes after the header, <= MAX_PAYLOAD
    u32 peer_id    the sender's id (the daemon's interface id for a vionet; 0 = parent)
    u32 seq        request number; a RESULT carries the seq of its request

Payloads (fixed layouts; the codec checks the exact length):
    TAP_SET_OFFLOAD      u32 tun_offload_flags
    TAP_SET_VNET_HDR_SZ  u32 size
    RESULT               i32 errno (0: done)
    STATS_REQUEST        (empty)
    STATS                UTF-8 JSON object, 2..MAX_PAYLOAD bytes (counters: a
                         nested object of numbers, strings, lists, booleans, null)
    LOG_VERBOSE          u8 verbose (0 brief, 1 verbose)
    VHOST_USER_FD        (empty; FLAG_FD required: a connected vhost-user socket,
                         vmd's IMSG_VIONET_CONN; each one replaces the last)
    VIONET_TAP           u32 vnet_hdr_sz (0: no IFF_VNET_HDR, else one of VNET_HDR_SIZES),
                         char name[IFNAMSIZ] (the tap's name, NUL-padded, valid_ifname);
                         FLAG_FD required: the tap fd, sent once, first

File descriptors: the I/O side uses SOCK_SEQPACKET, one frame per record, so
fds given with a chunk belong to the frame that chunk starts or continues.
They queue in the decoder; a frame with FLAG_FD takes the first queued fd.
Fds nobody claims are closed by check_no_stray_fds() / close().
"""

from __future__ import annotations

import enum
import json
import os
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from vmdnet.config.errors import InvalidValue
from vmdnet.config.limits import IFNAMSIZ
from vmdnet.config.validate import valid_ifname

FRAME_VERSION = 1
HEADER = struct.Struct("!BBHIII")
HEADER_SIZE = HEADER.size
# Stats of one vionet are a few hundred counters of at most ~60 bytes each as
# JSON; 64 KiB leaves room and bounds what an unprivileged child can make the
# parent buffer.
MAX_PAYLOAD = 64 * 1024
FLAG_FD = 0x01
KNOWN_FLAGS = FLAG_FD
# The parent's own peer id in frames it sends.
PARENT_ID = 0
# tun offload flags fit in the low byte today (TUN_F_* up to 0x40); leave room
# but refuse anything the kernel header could never define.
TUN_OFFLOAD_MASK = 0xFFFF
# virtio_net_hdr sizes a tap accepts (TUNSETVNETHDRSZ): legacy, v1, hash report.
VNET_HDR_SIZES = (10, 12, 20)
# VIONET_TAP's vnet_hdr_sz for a tap opened without IFF_VNET_HDR.
NO_VNET_HDR = 0
# An errno is a small positive number; 4095 is the kernel's MAX_ERRNO.
MAX_ERRNO = 4095


class PrivsepError(Exception):
    """A frame broke the protocol; the channel that carried it is finished."""


class Peer(enum.Enum):
    """The processes that exchange frames."""

    PARENT = "parent"
    VIONET = "vionet"


class MsgType(enum.IntEnum):
    """Frame types. Numbers are wire values: never reuse one."""

    RESULT = 1
    TAP_SET_OFFLOAD = 2
    TAP_SET_VNET_HDR_SZ = 3
    STATS_REQUEST = 4
    STATS = 5
    LOG_VERBOSE = 6
    VHOST_USER_FD = 7
    VIONET_TAP = 8


# Receiver -> {sender -> message types the receiver accepts from it}.
ACCEPTS: dict[Peer, dict[Peer, frozenset[MsgType]]] = {
    Peer.PARENT: {
        Peer.VIONET: frozenset({MsgType.TAP_SET_OFFLOAD, MsgType.TAP_SET_VNET_HDR_SZ,
                                MsgType.STATS}),
    },
    Peer.VIONET: {
        Peer.PARENT: frozenset({MsgType.RESULT, MsgType.STATS_REQUEST, MsgType.LOG_VERBOSE,
                                MsgType.VHOST_USER_FD, MsgType.VIONET_TAP}),
    },
}
# Message types that carry exactly one fd (and no other type may carry one).
FD_TYPES: frozenset[MsgType] = frozenset({MsgType.VHOST_USER_FD, MsgType.VIONET_TAP})


# --- payloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TapSetOffload:
    """Ask the parent for TUNSETOFFLOAD with these TUN_F_* flags."""

    flags: int


@dataclass(frozen=True)
class TapSetVnetHdrSz:
    """Ask the parent for TUNSETVNETHDRSZ."""

    size: int


@dataclass(frozen=True)
class Result:
    """The answer to a request: 0 or a positive errno."""

    errno: int


@dataclass(frozen=True)
class StatsRequest:
    """Ask a vionet for its counters."""


@dataclass(frozen=True)
class Stats:
    """A vionet's counters (its Vionet.stats() dict)."""

    counters: dict


@dataclass(frozen=True)
class LogVerbose:
    """Switch a process's logging between brief (False) and verbose (True)."""

    verbose: bool


@dataclass(frozen=True)
class VhostUserFd:
    """A connected vhost-user socket for a vionet (the fd rides with the frame)."""


@dataclass(frozen=True)
class VionetTap:
    """A vionet's tap (the fd rides with the frame): its name and virtio_net_hdr size."""

    name: str
    vnet_hdr_sz: int


Body = (TapSetOffload | TapSetVnetHdrSz | Result | StatsRequest | Stats | LogVerbose
        | VhostUserFd | VionetTap)

_U32 = struct.Struct("!I")
# VIONET_TAP: u32 vnet_hdr_sz, then the name NUL-padded to IFNAMSIZ (as in struct ifreq).
_TAP = struct.Struct(f"!I{IFNAMSIZ}s")
_I32 = struct.Struct("!i")
_U8 = struct.Struct("!B")


def _need_len(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise PrivsepError(f"{what}: payload of {len(data)} bytes, want {n}")


def _dec_offload(data: bytes) -> Body:
    _need_len(data, _U32.size, "TAP_SET_OFFLOAD")
    (flags,) = _U32.unpack(data)
    if flags & ~TUN_OFFLOAD_MASK:
        raise PrivsepError(f"TAP_SET_OFFLOAD: flags {flags:#x} outside {TUN_OFFLOAD_MASK:#x}")
    return TapSetOffload(flags)


def _dec_hdr_sz(data: bytes) -> Body:
    _need_len(data, _U32.size, "TAP_SET_VNET_HDR_SZ")
    (size,) = _U32.unpack(data)
    if size not in VNET_HDR_SIZES:
        raise PrivsepError(f"TAP_SET_VNET_HDR_SZ: size {size} not in {VNET_HDR_SIZES}")
    return TapSetVnetHdrSz(size)


def _dec_result(data: bytes) -> Body:
    _need_len(data, _I32.size, "RESULT")
    (err,) = _I32.unpack(data)
    if not 0 <= err <= MAX_ERRNO:
        raise PrivsepError(f"RESULT: errno {err} out of range")
    return Result(err)


def _dec_stats_request(data: bytes) -> Body:
    _need_len(data, 0, "STATS_REQUEST")
    return StatsRequest()


def _dec_stats(data: bytes) -> Body:
    try:
        counters = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PrivsepError(f"STATS: not UTF-8 JSON: {exc}") from None
    if not isinstance(counters, dict):
        raise PrivsepError("STATS: not a JSON object")
    return Stats(counters)


def _dec_log(data: bytes) -> Body:
    _need_len(data, _U8.size, "LOG_VERBOSE")
    (v,) = _U8.unpack(data)
    if v > 1:
        raise PrivsepError(f"LOG_VERBOSE: {v} is neither 0 nor 1")
    return LogVerbose(bool(v))


def _dec_vhost_user_fd(data: bytes) -> Body:
    _need_len(data, 0, "VHOST_USER_FD")
    return VhostUserFd()


def _check_tap(name: str, vnet_hdr_sz: int) -> None:
    if vnet_hdr_sz != NO_VNET_HDR and vnet_hdr_sz not in VNET_HDR_SIZES:
        raise PrivsepError(f"VIONET_TAP: vnet_hdr_sz {vnet_hdr_sz} not in "
                           f"{(NO_VNET_HDR, *VNET_HDR_SIZES)}")
    try:
        valid_ifname(name)
    except InvalidValue as exc:
        raise PrivsepError(f"VIONET_TAP: {exc}") from None


def _dec_tap(data: bytes) -> Body:
    _need_len(data, _TAP.size, "VIONET_TAP")
    vnet_hdr_sz, raw_name = _TAP.unpack(data)
    name, nul, pad = raw_name.partition(b"\0")
    if not nul or pad.strip(b"\0"):
        raise PrivsepError("VIONET_TAP: name not NUL-terminated or bytes after its NUL")
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise PrivsepError("VIONET_TAP: name is not ASCII") from None
    _check_tap(text, vnet_hdr_sz)
    return VionetTap(text, vnet_hdr_sz)


_DECODERS = {
    MsgType.TAP_SET_OFFLOAD: _dec_offload,
    MsgType.TAP_SET_VNET_HDR_SZ: _dec_hdr_sz,
    MsgType.RESULT: _dec_result,
    MsgType.STATS_REQUEST: _dec_stats_request,
    MsgType.STATS: _dec_stats,
    MsgType.LOG_VERBOSE: _dec_log,
    MsgType.VHOST_USER_FD: _dec_vhost_user_fd,
    MsgType.VIONET_TAP: _dec_tap,
}


def _payload(body: Body) -> tuple[MsgType, bytes]:
    """The wire type and payload of a body (the inverse of _DECODERS)."""
    if isinstance(body, TapSetOffload):
        return MsgType.TAP_SET_OFFLOAD, _U32.pack(body.flags)
    if isinstance(body, TapSetVnetHdrSz):
        return MsgType.TAP_SET_VNET_HDR_SZ, _U32.pack(body.size)
    if isinstance(body, Result):
        return MsgType.RESULT, _I32.pack(body.errno)
    if isinstance(body, StatsRequest):
        return MsgType.STATS_REQUEST, b""
    if isinstance(body, Stats):
        return MsgType.STATS, json.dumps(body.counters, sort_keys=True).encode()
    if isinstance(body, LogVerbose):
        return MsgType.LOG_VERBOSE, _U8.pack(int(body.verbose))
    if isinstance(body, VhostUserFd):
        return MsgType.VHOST_USER_FD, b""
    if isinstance(body, VionetTap):
        _check_tap(body.name, body.vnet_hdr_sz)
        return MsgType.VIONET_TAP, _TAP.pack(body.vnet_hdr_sz, body.name.encode("ascii"))
    raise TypeError(f"not a privsep message body: {body!r}")


@dataclass(frozen=True)
class Message:
    """One decoded frame. `fd` (when not None) is now owned by the receiver."""

    type: MsgType
    peer_id: int
    seq: int
    body: Body
    fd: int | None = None


# --- the codec -----------------------------------------------------------------------------


def encode(sender: Peer, receiver: Peer, body: Body, *, peer_id: int, seq: int,
           with_fd: bool = False) -> bytes:
    """One frame from SENDER to RECEIVER; the caller sends the fd (if any) with it.

    Raises PrivsepError if the receiver would refuse it, so that bugs show at
    the sender; the decoder below is what actually guards the receiver.
    """
    mtype, payload = _payload(body)
    if mtype not in ACCEPTS[receiver].get(sender, frozenset()):
        raise PrivsepError(f"{receiver.value} does not accept {mtype.name} from {sender.value}")
    if with_fd != (mtype in FD_TYPES):
        raise PrivsepError(f"{mtype.name} {'needs' if mtype in FD_TYPES else 'carries no'} fd")
    if len(payload) > MAX_PAYLOAD:
        raise PrivsepError(f"{mtype.name}: payload of {len(payload)} bytes > {MAX_PAYLOAD}")
    if not (0 <= peer_id <= 0xFFFFFFFF and 0 <= seq <= 0xFFFFFFFF):
        raise PrivsepError("peer_id and seq are u32")
    flags = FLAG_FD if with_fd else 0
    return HEADER.pack(FRAME_VERSION, flags, mtype, len(payload), peer_id, seq) + payload


@dataclass
class Decoder:
    """Frames from one peer to this process: receive(bytes, fds) -> messages.

    After a PrivsepError the decoder is broken: every later call raises too
    (a peer that broke the protocol once is not trusted again).
    """

    me: Peer
    sender: Peer
    _buf: bytearray = field(default_factory=bytearray)
    _fds: deque[int] = field(default_factory=deque)
    _broken: str | None = None

    @property
    def accepted(self) -> frozenset[MsgType]:
        return ACCEPTS[self.me].get(self.sender, frozenset())

    def receive(self, data: bytes, fds: Iterable[int] = ()) -> list[Message]:
        """Append DATA (and the fds that came with it); return every complete frame."""
        self._fds.extend(fds)
        if self._broken:
            self.close()
            raise PrivsepError(f"channel already broken: {self._broken}")
        self._buf += data
        out: list[Message] = []
        try:
            while (msg := self._one()) is not None:
                out.append(msg)
        except PrivsepError as exc:
            self._broken = str(exc)
            for m in out:
                if m.fd is not None:
                    os.close(m.fd)
            self.close()
            raise
        return out

    def _one(self) -> Message | None:
        if len(self._buf) < HEADER_SIZE:
            return None
        version, flags, raw_type, length, peer_id, seq = HEADER.unpack_from(self._buf)
        mtype = self._check_header(version, flags, raw_type, length)
        if len(self._buf) < HEADER_SIZE + length:
            return None
        payload = bytes(self._buf[HEADER_SIZE:HEADER_SIZE + length])
        if flags & FLAG_FD and not self._fds:
            raise PrivsepError(f"{mtype.name}: fd flag set but no fd came with it")
        body = _DECODERS[mtype](payload)
        del self._buf[:HEADER_SIZE + length]
        fd = self._fds.popleft() if flags & FLAG_FD else None
        return Message(mtype, peer_id, seq, body, fd)

    def _check_header(self, version: int, flags: int, raw_type: int, length: int) -> MsgType:
        if version != FRAME_VERSION:
            raise PrivsepError(f"frame version {version}, want {FRAME_VERSION}")
        if flags & ~KNOWN_FLAGS:
            raise PrivsepError(f"unknown frame flags {flags:#x}")
        try:
            mtype = MsgType(raw_type)
        except ValueError:
            raise PrivsepError(f"unknown message type {raw_type}") from None
        if mtype not in self.accepted:
            raise PrivsepError(f"{self.me.value} does not accept {mtype.name} "
                               f"from {self.sender.value}")
        if bool(flags & FLAG_FD) != (mtype in FD_TYPES):
            state = "missing" if mtype in FD_TYPES else "set"
            raise PrivsepError(f"{mtype.name}: fd flag {state}")
        if length > MAX_PAYLOAD:
            raise PrivsepError(f"{mtype.name}: length {length} > {MAX_PAYLOAD}")
        return mtype

    @property
    def idle(self) -> bool:
        """No partial frame is buffered (a record boundary may be checked here)."""
        return not self._buf

    def check_no_stray_fds(self) -> None:
        """At a record boundary: fds nobody claimed are closed and break the channel."""
        if self._fds and self.idle:
            n = len(self._fds)
            self.close()
            self._broken = f"{n} unclaimed fds"
            raise PrivsepError(self._broken)

    def close(self) -> None:
        """Close every fd the decoder still holds."""
        while self._fds:
            os.close(self._fds.popleft())
