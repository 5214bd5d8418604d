"""Hostile front-end messages: each must raise VhostUserError and leave no fd open."""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import test_vhost_user_frames as fr  # noqa: E402

from vmdnet.vhost_user import Backend, VhostUserError  # noqa: E402
from vmdnet.vhost_user import protocol as P  # noqa: E402

OFFER = fr.F_VERSION_1 | fr.F_MRG_RXBUF
Seq = list[tuple[bytes, list[int]]]

REGION = (fr.GPA, fr.MEM_SIZE, fr.UVA, 0)


def setup_until_enable() -> Seq:
    """The handshake up to (not including) SET_VRING_ENABLE."""
    return [s for s in fr.handshake() if struct.unpack_from("=I", s[0])[0] != fr.SET_VRING_ENABLE]


def with_ring0(addr: tuple[int, int, int], num: int = fr.QUEUE_SIZE) -> Seq:
    """Setup with vring 0 at other addresses, then enable it."""
    seq = [s for s in setup_until_enable() if s[0][:4] != struct.pack("=I", fr.SET_VRING_ADDR)
           or struct.unpack_from("=I", s[0], 12)[0] != 0]
    return seq + [(fr.vring_addr(0, *addr), []), (fr.state(fr.SET_VRING_ENABLE, 0, 1), [])]


def raw(request: int, payload: bytes, flags: int = fr.VERSION, size: int | None = None) -> bytes:
    n = len(payload) if size is None else size
    return struct.pack("=III", request, flags, n) + payload


CASES: dict[str, Callable[[], Seq]] = {
    "oversized payload": lambda: [(raw(fr.SET_MEM_TABLE, b"", size=1 << 20), [])],
    "size over limit by one region": lambda: [
        (fr.mem_table([(i << 20, 1 << 20, fr.UVA + (i << 20), 0) for i in range(9)]),
         [fr.memfd(4096) for _ in range(8)])],
    "u64 payload too short": lambda: [(raw(fr.SET_FEATURES, b"\0" * 4), [])],
    "GET with a payload": lambda: [(raw(fr.GET_FEATURES, b"\0" * 8), [])],
    "vring addr too short": lambda: [(raw(fr.SET_VRING_ADDR, b"\0" * 32), [])],
    "version 2": lambda: [(fr.frame(fr.GET_FEATURES, flags=2), [])],
    "reply flag on request": lambda: [(fr.frame(fr.GET_FEATURES, flags=fr.VERSION | fr.REPLY), [])],
    "unknown flag bit": lambda: [(fr.frame(fr.GET_FEATURES, flags=fr.VERSION | 0x10), [])],
    "unknown request": lambda: [(fr.frame(99), [])],
    "request 0": lambda: [(fr.frame(0), [])],
    "unsupported SET_LOG_BASE": lambda: [(fr.u64(fr.SET_LOG_BASE, 0), [fr.memfd(4096)])],
    "zero regions": lambda: [(fr.mem_table([]), [])],
    "nregions larger than payload": lambda: [(fr.mem_table([REGION], nregions=2), [fr.memfd()])],
    "nregions smaller than payload": lambda: [
        (fr.mem_table([REGION, (2 << 20, 4096, fr.UVA + (2 << 20), 0)], nregions=1),
         [fr.memfd(), fr.memfd()])],
    "zero-size region": lambda: [(fr.mem_table([(0, 0, fr.UVA, 0)]), [fr.memfd()])],
    "guest addresses overlap": lambda: [
        (fr.mem_table([(0, 0x2000, fr.UVA, 0), (0x1000, 0x2000, fr.UVA + 0x10000, 0)]),
         [fr.memfd(), fr.memfd()])],
    "user addresses overlap": lambda: [
        (fr.mem_table([(0, 0x2000, fr.UVA, 0), (0x10000, 0x2000, fr.UVA + 0x1000, 0)]),
         [fr.memfd(), fr.memfd()])],
    "guest address wraps": lambda: [
        (fr.mem_table([(P.U64_MAX - 0xFFF, 0x2000, fr.UVA, 0)]), [fr.memfd()])],
    "user address wraps": lambda: [
        (fr.mem_table([(0, 0x2000, P.U64_MAX - 0xFFF, 0)]), [fr.memfd()])],
    "mmap offset wraps": lambda: [(fr.mem_table([(0, 0x2000, fr.UVA, P.U64_MAX)]), [fr.memfd()])],
    "fewer fds than regions": lambda: [
        (fr.mem_table([REGION, (2 << 20, 4096, fr.UVA + (2 << 20), 0)]), [fr.memfd()])],
    "memory table without fds": lambda: [(fr.mem_table([REGION]), [])],
    "non-power-of-two ring": lambda: [(fr.state(fr.SET_VRING_NUM, 0, 100), [])],
    "ring size 0": lambda: [(fr.state(fr.SET_VRING_NUM, 0, 0), [])],
    "ring size 65536": lambda: [(fr.state(fr.SET_VRING_NUM, 0, 65536), [])],
    "vring index out of range": lambda: [(fr.state(fr.SET_VRING_NUM, 2, 256), [])],
    "kick index out of range": lambda: [(fr.u64(fr.SET_VRING_KICK, 5), [fr.eventfd()])],
    "enable index out of range": lambda: [(fr.state(fr.SET_VRING_ENABLE, 200, 1), [])],
    "get base index out of range": lambda: [(fr.state(fr.GET_VRING_BASE, 2, 0), [])],
    "kick reserved bits": lambda: [(fr.u64(fr.SET_VRING_KICK, 0x200), [fr.eventfd()])],
    "kick without fd": lambda: [(fr.u64(fr.SET_VRING_KICK, 0), [])],
    "kick nofd with an fd": lambda: [(fr.u64(fr.SET_VRING_KICK, fr.NOFD), [fr.eventfd()])],
    "call with two fds": lambda: [(fr.u64(fr.SET_VRING_CALL, 0), [fr.eventfd(), fr.eventfd()])],
    "fd on SET_OWNER": lambda: [(fr.frame(fr.SET_OWNER), [fr.eventfd()])],
    "fd on GET_FEATURES": lambda: [(fr.frame(fr.GET_FEATURES), [fr.memfd()])],
    "too many fds for one message": lambda: [
        (fr.frame(fr.SET_OWNER), [fr.eventfd() for _ in range(9)])],
    "features not offered": lambda: [(fr.u64(fr.SET_FEATURES, 1 << 45), [])],
    "protocol features not offered": lambda: [(fr.u64(fr.SET_PROTOCOL_FEATURES, 1 << 1), [])],
    "split base over 16 bits": lambda: [(fr.state(fr.SET_VRING_BASE, 0, 0x10000), [])],
    "enable value 2": lambda: [(fr.state(fr.SET_VRING_ENABLE, 0, 2), [])],
    "vring addr unknown flag": lambda: [(fr.vring_addr(0, fr.UVA, fr.UVA, fr.UVA, flags=2), [])],
    "dirty log without LOG_ALL": lambda: [(fr.vring_addr(0, fr.UVA, fr.UVA, fr.UVA, flags=1), [])],
    "ring outside guest memory": lambda: with_ring0(
        (fr.UVA + fr.MEM_SIZE, fr.UVA, fr.UVA + 0x4000)),
    "ring straddles region end": lambda: with_ring0(
        (fr.UVA + fr.MEM_SIZE - 0x800, fr.UVA + 0x8000, fr.UVA + 0x4000)),
    "descriptor table misaligned": lambda: with_ring0(
        (fr.UVA + 8, fr.UVA + 0x8000, fr.UVA + 0x4000)),
    "used ring misaligned": lambda: with_ring0((fr.UVA, fr.UVA + 0x8002, fr.UVA + 0x4000)),
    "avail ring misaligned": lambda: with_ring0((fr.UVA, fr.UVA + 0x8000, fr.UVA + 0x4001)),
    "size change on started ring": lambda: setup_until_enable() + [
        (fr.state(fr.SET_VRING_NUM, 0, 128), [])],
    "base change on started ring": lambda: setup_until_enable() + [
        (fr.state(fr.SET_VRING_BASE, 0, 1), [])],
    "ring moved while running": lambda: fr.handshake() + [
        (fr.vring_addr(1, *fr.ring_addrs(0)), [])],
    "memory pulled from under a running ring": lambda: fr.handshake() + [
        (fr.mem_table([(fr.GPA, 0x1000, fr.UVA, 0)]), [fr.memfd()])],
    "MTU without protocol feature": lambda: [(fr.u64(fr.NET_SET_MTU, 1500), [])],
    "REM_MEM_REG of unknown region": lambda: [
        (fr.u64(fr.SET_PROTOCOL_FEATURES, fr.PF_CONFIGURE_MEM_SLOTS), []),
        (fr.single_region(fr.REM_MEM_REG, 0, 0x1000, fr.UVA), [])],
    "ADD_MEM_REG without fd": lambda: [
        (fr.u64(fr.SET_PROTOCOL_FEATURES, fr.PF_CONFIGURE_MEM_SLOTS), []),
        (fr.single_region(fr.ADD_MEM_REG, 0, 0x1000, fr.UVA), [])],
    "ADD_MEM_REG of size 0": lambda: [
        (fr.u64(fr.SET_PROTOCOL_FEATURES, fr.PF_CONFIGURE_MEM_SLOTS), []),
        (fr.single_region(fr.ADD_MEM_REG, 0, 0, fr.UVA), [fr.memfd()])],
}

# Why each case must be refused: a substring of the error, so a case cannot pass
# by tripping over an unrelated check.
REASONS: dict[str, str] = {
    'ADD_MEM_REG of size 0': 'region of size 0',
    'ADD_MEM_REG without fd': 'takes exactly 1',
    'GET with a payload': 'payload size 8',
    'MTU without protocol feature': 'needs protocol feature NET_MTU',
    'REM_MEM_REG of unknown region': 'no memory region',
    'avail ring misaligned': 'available ring at 0x7f0000004001 not 2-byte aligned',
    'base change on started ring': 'base change while started',
    'call with two fds': 'carries 2 fds',
    'descriptor table misaligned': 'not 16-byte aligned',
    'dirty log without LOG_ALL': 'dirty logging',
    'enable index out of range': 'index 200 out of range',
    'enable value 2': 'enable value 2',
    'fd on GET_FEATURES': 'takes none',
    'fd on SET_OWNER': 'takes none',
    'features not offered': "not offered: ['bit45']",
    'fewer fds than regions': '2 regions carries 1 fds',
    'get base index out of range': 'index 2 out of range',
    'guest address wraps': 'guest_phys_addr 0xfffffffffffff000 + size 0x2000 overflows',
    'guest addresses overlap': 'overlap in guest_phys_addr',
    'kick index out of range': 'index 5 out of range',
    'kick nofd with an fd': 'nofd=True carries 1 fds',
    'kick reserved bits': 'reserved bits',
    'kick without fd': 'nofd=False carries 0 fds',
    'memory pulled from under a running ring': 'outside guest memory',
    'memory table without fds': '1 regions carries 0 fds',
    'mmap offset wraps': 'mmap_offset',
    'non-power-of-two ring': 'size 100 invalid',
    'nregions larger than payload': 'says 2 regions in 40 bytes',
    'nregions smaller than payload': 'says 1 regions in 72 bytes',
    'oversized payload': 'over the 264 B limit',
    'protocol features not offered': 'LOG_SHMFD',
    'reply flag on request': 'flags 0x5 not allowed',
    'request 0': 'unknown(0): request not supported',
    'ring moved while running': 'moved while running',
    'ring outside guest memory': '[0x7f0000100000, +0x1000) outside guest memory',
    'ring size 0': 'size 0 invalid',
    'ring size 65536': 'size 65536 invalid',
    'ring straddles region end': 'outside guest memory',
    'size change on started ring': 'size change while started',
    'size over limit by one region': '296 B over the 264 B limit',
    'split base over 16 bits': 'base 65536 over 65535',
    'too many fds for one message': '9 fds for one message',
    'u64 payload too short': 'payload size 4',
    'unknown flag bit': 'flags 0x11 not allowed',
    'unknown request': 'unknown(99)',
    'unsupported SET_LOG_BASE': 'SET_LOG_BASE: request not supported',
    'used ring misaligned': 'used ring at 0x7f0000008002 not 4-byte aligned',
    'user address wraps': 'userspace_addr 0xfffffffffffff000',
    'user addresses overlap': 'overlap in userspace_addr',
    'version 2': 'version 2, expected 1',
    'vring addr too short': 'payload size 32',
    'vring addr unknown flag': 'flags 0x2 unknown',
    'vring index out of range': 'index 2 out of range',
    'zero regions': 'payload size 8, expected one of [40',
    'zero-size region': 'region of size 0',
}

assert REASONS.keys() == CASES.keys()


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_message_refused_without_fd_leak(case: str, bytewise: bool) -> None:
    before = fr.open_fds()
    seq = CASES[case]()
    protocol = fr.PF_MQ | fr.PF_REPLY_ACK | fr.PF_CONFIGURE_MEM_SLOTS
    b = Backend(OFFER, protocol_features=protocol)
    with pytest.raises(VhostUserError) as info:
        for data, fds in seq:
            if bytewise:
                for i in range(len(data)):
                    b.receive(data[i:i + 1], fds if i == 0 else [])
            else:
                b.receive(data, fds)
    assert REASONS[case] in str(info.value)
    b.disconnect()
    b.close()
    assert fr.open_fds() - before == set(), "fds leaked"


def test_whole_stream_error_keeps_earlier_events_and_closes_queued_fds() -> None:
    """A bad message in the middle of one chunk: earlier messages take effect, the fds of
    messages after it (already parsed or not) are closed."""
    before = fr.open_fds()
    b = Backend(OFFER)
    data = fr.u64(fr.SET_FEATURES, fr.F_VERSION_1) + fr.frame(0) + fr.frame(fr.SET_OWNER)
    with pytest.raises(VhostUserError) as info:
        b.receive(data, [])
    assert len(info.value.events) == 1
    b.close()
    assert fr.open_fds() - before == set()
