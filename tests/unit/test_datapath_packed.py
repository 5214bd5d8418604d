"""vmdnet.vionet.datapath on packed virtqueues (VIRTIO_F_RING_PACKED; no root needed).

`PackedGuest` plays a guest driver of a packed ring (virtio 1.3, 2.8), written
here from the spec: its RAM is a memfd the data path maps through GuestMemory
as it maps a VMM's; descriptors {addr, len, id, flags} are written with
struct.pack_into, the first descriptor's flags last, with the AVAIL/USED bits
of the driver's wrap counter; used descriptors are read back in ring order.
A SOCK_SEQPACKET socketpair stands in for the tap (as in test_datapath.py);
the end-to-end test with a real driver is tests/e2e/test_vionet_dpdk_packed.py.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest
from pktlib import IPPROTO_UDP, l4_frame
from test_datapath import GPA, UADDR, GuestRam

from vmdnet.offload import VnetHdr
from vmdnet.vionet.datapath import (
    F_RING_PACKED,
    NO_BUFFERS,
    RingBroken,
    RingError,
    RxConfig,
    RxPath,
    TxConfig,
    TxPath,
)

RAM_SIZE = 4 << 20
DESC, DRIVER_EVENT, DEVICE_EVENT = 0x0000, 0x80000, 0x80010   # offsets in RAM
DATA = 0x90000
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
F_AVAIL, F_USED = 1 << 7, 1 << 15
WRAP = 1 << 15
EVENT_ENABLE, EVENT_DISABLE, EVENT_DESC = 0, 1, 2
FEAT_INDIRECT, FEAT_EVENT_IDX = 1 << 28, 1 << 29
HDR = 12


class PackedGuest(GuestRam):
    """A guest driver's view of one packed virtqueue in a memfd."""

    def __init__(self, num: int = 256, features: int = 0):
        super().__init__(num, RAM_SIZE, DATA, name="vn-test-packed")
        self.features = features | F_RING_PACKED
        self.avail_slot, self.avail_wrap = 0, 1    # wrap counters start at 1
        self.used_slot, self.used_wrap = 0, 1
        self.next_id = 0
        self.ndesc: dict[int, int] = {}
        self.setup(WRAP)

    def setup(self, base: int) -> None:
        self.vring.setup(self.mem, self.num, UADDR + DESC, UADDR + DRIVER_EVENT,
                         UADDR + DEVICE_EVENT, base, self.features)

    # -- the ring --
    def _avail_flags(self, wrap: int) -> int:
        return F_AVAIL if wrap else F_USED

    def desc(self, slot: int, addr: int, length: int, buf_id: int, flags: int,
             table: int | None = None) -> None:
        off = DESC + 16 * slot if table is None else table - GPA + 16 * slot
        struct.pack_into("<QIHH", self.ram, off, addr, length, buf_id, flags)

    def chain(self, bufs: list[tuple[int, int, int]], buf_id: int | None = None) -> int:
        """Make (gpa, len, flags) pieces available as one chain; return its id.
        The head's flags are written last (2.8.21)."""
        if buf_id is None:
            buf_id, self.next_id = self.next_id, (self.next_id + 1) % self.num
        head = self.avail_slot
        for k, (gpa, ln, fl) in enumerate(bufs):
            fl |= (F_NEXT if k + 1 < len(bufs) else 0) | self._avail_flags(self.avail_wrap)
            self.desc(self.avail_slot, gpa, ln, buf_id, 0 if k == 0 else fl)
            if k == 0:
                head_flags = fl
            self.avail_slot += 1
            if self.avail_slot == self.num:
                self.avail_slot, self.avail_wrap = 0, self.avail_wrap ^ 1
        self.ndesc[buf_id] = len(bufs)
        struct.pack_into("<H", self.ram, DESC + 16 * head + 14, head_flags)
        return buf_id

    def add_tx(self, pieces: list[bytes]) -> int:
        return self.chain([(self.put(p), len(p), 0) for p in pieces])

    def add_rx(self, sizes: list[int]) -> list[tuple[int, int]]:
        """One single-buffer RX chain per size; returns (id, gpa) of each."""
        out = []
        for n in sizes:
            gpa = self.alloc(n)
            out.append((self.chain([(gpa, n, F_WRITE)]), gpa))
        return out

    def used(self) -> list[tuple[int, int]]:
        """Used descriptors (id, len) written since the last call, in ring order."""
        out = []
        while True:
            _, ln, buf_id, fl = struct.unpack_from("<QIHH", self.ram, DESC + 16 * self.used_slot)
            if bool(fl & F_AVAIL) != self.used_wrap or bool(fl & F_USED) != self.used_wrap:
                return out
            out.append((buf_id, ln))
            for _ in range(self.ndesc[buf_id]):
                self.used_slot += 1
                if self.used_slot == self.num:
                    self.used_slot, self.used_wrap = 0, self.used_wrap ^ 1

    def event(self, off: int) -> tuple[int, int]:
        """(off_wrap, flags) of an event suppression structure."""
        return struct.unpack_from("<HH", self.ram, off)


@pytest.fixture
def fake_tap() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, peer): a packet socketpair standing in for a tap."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def guest() -> Iterator[PackedGuest]:
    g = PackedGuest()
    yield g
    g.close()


def udp_frame(n: int) -> bytes:
    return l4_frame(4, IPPROTO_UDP, bytes(range(256)) * (n // 256) + bytes(n % 256)).frame


def recv_all(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def test_tx_frames_cross_the_ring_end_and_wrap(fake_tap):
    """Chains of 1-3 descriptors through an 8-slot ring, many passes: every
    frame arrives, every chain comes back under the id of its last descriptor."""
    ours, peer = fake_tap
    g = PackedGuest(num=8)
    try:
        tx = TxPath(g.vring, g.mem, ours.fileno(), TxConfig())
        assert g.vring.packed
        hdr = VnetHdr().pack(HDR)
        for i in range(30):
            frame = udp_frame(64 - 42 if i % 2 else 1514 - 42)
            pieces = ([hdr + frame], [hdr, frame], [hdr, frame[:30], frame[30:]])[i % 3]
            buf_id = g.add_tx(pieces)
            assert tx.drain() == 1
            assert recv_all(peer) == [hdr + frame]
            assert g.used() == [(buf_id, 0)]
            g.next_buf = GPA + DATA
        st = tx.stats.as_dict()
        assert st["packets"] == 30 and st["chains"] == 30 and not any(st["drops"].values())
        assert g.vring.broken is None
    finally:
        g.close()


def test_tx_bad_id_breaks_the_ring(guest, fake_tap):
    ours, peer = fake_tap
    tx = TxPath(guest.vring, guest.mem, ours.fileno(), TxConfig())
    hdr = VnetHdr().pack(HDR)
    guest.add_tx([hdr + udp_frame(100)])
    guest.chain([(guest.put(hdr + udp_frame(100)), HDR + 142, 0)], buf_id=guest.num)
    with pytest.raises(RingBroken) as e:
        tx.drain()
    assert e.value.reason == RingError.HEAD
    assert len(recv_all(peer)) == 1             # the good chain before it went out
    assert tx.stats.as_dict()["ring_errors"]["head"] == 1


def test_tx_bad_buffers_dropped_and_counted(guest, fake_tap):
    ours, peer = fake_tap
    tx = TxPath(guest.vring, guest.mem, ours.fileno(), TxConfig())
    outside = guest.chain([(GPA + RAM_SIZE + 0x1000, 100, 0)])
    short = guest.add_tx([b"\0" * 6])
    assert tx.drain() == 2
    drops = tx.stats.as_dict()["drops"]
    assert drops["desc_addr"] == drops["hdr_short"] == 1
    assert guest.used() == [(outside, 0), (short, 0)]
    assert recv_all(peer) == [] and guest.vring.broken is None


def test_tx_indirect(fake_tap):
    ours, peer = fake_tap
    g = PackedGuest(features=FEAT_INDIRECT)
    try:
        hdr, frame = VnetHdr().pack(HDR), udp_frame(1000)
        table = g.alloc(32)
        g.desc(0, g.put(hdr), HDR, 0, 0, table=table)
        g.desc(1, g.put(frame), len(frame), 0, 0, table=table)
        buf_id = g.chain([(table, 32, F_INDIRECT)])
        tx = TxPath(g.vring, g.mem, ours.fileno(), TxConfig())
        assert tx.drain() == 1
        assert recv_all(peer) == [hdr + frame]
        assert g.used() == [(buf_id, 0)]
        # Nested: refused.
        g.desc(1, table, 32, 0, F_INDIRECT, table=table)
        g.chain([(table, 32, F_INDIRECT)])
        with pytest.raises(RingBroken) as e:
            tx.drain()
        assert e.value.reason == RingError.INDIRECT_NESTED
    finally:
        g.close()


def test_rx_mergeable_and_no_buffers(guest, fake_tap):
    ours, peer = fake_tap
    frame = udp_frame(2400)
    posted = guest.add_rx([1000] * 4)
    rx = RxPath(guest.vring, guest.mem, ours.fileno(), RxConfig(max_pkt=4000))
    peer.send(VnetHdr().pack(HDR) + frame)
    assert rx.fill() == 1
    used = guest.used()
    assert [u[0] for u in used] == [i for i, _ in posted[:3]]
    data = b"".join(guest.read(gpa, ln) for (_, gpa), (_, ln) in zip(posted[:3], used, strict=True))
    assert VnetHdr.unpack(data, HDR).num_buffers == 3
    assert data[HDR:] == frame
    # One buffer left, too small: parked until more come.
    peer.send(VnetHdr().pack(HDR) + frame)
    assert rx.fill() == NO_BUFFERS and rx.parked_len == HDR + len(frame)
    guest.add_rx([1000] * 2)
    assert rx.fill() == 1 and rx.parked_len == 0
    assert len(guest.used()) == 3
    assert guest.vring.broken is None


def test_vring_base_carries_the_wrap_counter(fake_tap):
    """GET_VRING_BASE: the next chain's slot with the avail wrap counter in bit
    15 (and again as the used position in bits 16..31); SET_VRING_BASE resumes
    there."""
    ours, peer = fake_tap
    g = PackedGuest(num=4)
    try:
        tx = TxPath(g.vring, g.mem, ours.fileno(), TxConfig())
        for _ in range(5):
            buf_id = g.add_tx([VnetHdr().pack(HDR) + udp_frame(64)])
            assert tx.drain() == 1
            assert g.used() == [(buf_id, 0)]
        base = g.vring.reset()
        assert base == 1 | 1 << 16              # slot 1, wrap counter 0
        g.setup(base)
        g.add_tx([VnetHdr().pack(HDR) + udp_frame(64)])
        tx = TxPath(g.vring, g.mem, ours.fileno(), TxConfig())
        assert tx.drain() == 1
        assert len(g.used()) == 1
        assert g.vring.reset() == 2 | 2 << 16
        with pytest.raises(OSError) as e:        # slot beyond the ring
            g.setup(4 | WRAP)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(ValueError):
            g.setup(1 << 32)
        g.setup(WRAP)
        assert len(recv_all(peer)) == 6
    finally:
        g.close()


def test_event_suppression(fake_tap):
    ours, _ = fake_tap
    g = PackedGuest(num=16, features=FEAT_EVENT_IDX)
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        g.vring.call_fd = w
        tx = TxPath(g.vring, g.mem, ours.fileno(), TxConfig())
        # Ours: kick requested at the first slot not seen available (DESC mode).
        assert g.event(DEVICE_EVENT) == (0 | WRAP, EVENT_DESC)
        g.vring.notify_disable()
        assert g.event(DEVICE_EVENT)[1] == EVENT_DISABLE
        g.add_tx([VnetHdr().pack(HDR) + udp_frame(64)])
        assert g.vring.notify_enable()          # work arrived: do not sleep
        # The guest's: DISABLE suppresses notifications.
        struct.pack_into("<HH", g.ram, DRIVER_EVENT, 0, EVENT_DISABLE)
        assert tx.drain() == 1
        st = tx.stats.as_dict()
        assert st["notify_suppressed"] == 1 and st["notifications"] == 0
        assert g.event(DEVICE_EVENT) == (1 | WRAP, EVENT_DESC)
        # DESC: notify once the used descriptor at slot 3 (wrap 1) is written.
        struct.pack_into("<HH", g.ram, DRIVER_EVENT, 3 | WRAP, EVENT_DESC)
        counts = []
        for _ in range(3):
            g.add_tx([VnetHdr().pack(HDR) + udp_frame(64)])
            tx.drain()
            counts.append(tx.stats.as_dict()["notifications"])
        assert counts == [0, 0, 1]               # slots 1, 2 written; then 3
        assert os.read(r, 64)
    finally:
        os.close(r)
        os.close(w)
        g.close()
