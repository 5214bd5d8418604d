"""vmdnet.vionet.datapath: guest memory, virtqueues, TX/RX batches (no root needed).

`FakeGuest` plays the guest driver: its RAM is a memfd that the data path maps
through GuestMemory exactly as it maps a VMM's, and the test writes
descriptors, the avail ring and buffers with struct.pack_into on its own
mapping.  A SOCK_SEQPACKET socketpair stands in for the tap here (one write,
one packet); tests/unit/test_datapath_tap.py uses real taps.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import platform
import socket
import struct
import subprocess
import sys
import textwrap

import pytest
from pktlib import GSO_TCPV4, IPPROTO_TCP, IPPROTO_UDP, l4_frame

from vmdnet.offload import VnetHdr, segment, verify
from vmdnet.vionet.datapath import (
    DROP_NAMES,
    NO_BUFFERS,
    GuestMemory,
    MemRegion,
    RingBroken,
    RingError,
    RxConfig,
    RxPath,
    TxConfig,
    TxPath,
    Vring,
)

GPA = 0x100000
UADDR = 0x7F00_0000_0000
RAM_SIZE = 4 << 20
DESC, AVAIL, USED = 0x0000, 0x10000, 0x20000      # ring offsets in RAM
DATA = 0x40000                                     # buffers from here on
VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT = 1, 2, 4
F_INDIRECT, F_EVENT_IDX = 1 << 28, 1 << 29
HDR = 12


class GuestRam:
    """A guest's RAM in a sealed memfd, mapped by the data path as a VMM's would be,
    with a bump allocator for buffers from `data` on.  The ring layouts live in
    the subclasses (FakeGuest: split; test_datapath_packed.PackedGuest: packed)."""

    def __init__(self, num: int, ram_size: int, data: int, name: str = "vn-test-guest"):
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, ram_size)
        # As QEMU's memory-backend-memfd does by default (seal=on).
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.ram = mmap.mmap(self.fd, ram_size)
        self.mem = GuestMemory()
        self.mem.map([MemRegion(os.dup(self.fd), GPA, ram_size, UADDR, 0)])
        self.vring = Vring()
        self.num = num
        self.next_buf = GPA + data

    def close(self) -> None:
        self.vring.reset()
        self.mem.unmap_all()
        self.ram.close()
        os.close(self.fd)

    # -- memory --
    def alloc(self, n: int) -> int:
        gpa = self.next_buf
        self.next_buf += (n + 63) & ~63
        return gpa

    def put(self, data: bytes) -> int:
        gpa = self.alloc(len(data))
        self.ram[gpa - GPA:gpa - GPA + len(data)] = data
        return gpa

    def read(self, gpa: int, n: int) -> bytes:
        return self.ram[gpa - GPA:gpa - GPA + n]


class FakeGuest(GuestRam):
    """A guest driver's view of one split virtqueue in a memfd."""

    def __init__(self, num: int = 256, features: int = 0, ram_size: int = RAM_SIZE):
        super().__init__(num, ram_size, DATA)
        self.vring.setup(self.mem, num, UADDR + DESC, UADDR + AVAIL, UADDR + USED, 0, features)
        self.avail_idx = 0
        self.used_seen = 0
        self.next_desc = 0

    # -- rings --
    def desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
             table: int | None = None) -> None:
        off = (DESC + 16 * i) if table is None else (table - GPA + 16 * i)
        struct.pack_into("<QIHH", self.ram, off, addr, length, flags, nxt)

    def take_desc(self) -> int:
        i = self.next_desc
        self.next_desc = (self.next_desc + 1) % self.num
        return i

    def chain(self, bufs: list[tuple[int, int, int]]) -> int:
        """Descriptors for (gpa, len, flags) pieces, linked; return the head."""
        idx = [self.take_desc() for _ in bufs]
        for k, (gpa, ln, fl) in enumerate(bufs):
            last = k == len(bufs) - 1
            self.desc(idx[k], gpa, ln, fl | (0 if last else VRING_DESC_F_NEXT),
                      0 if last else idx[k + 1])
        return idx[0]

    def publish(self, head: int) -> None:
        struct.pack_into("<H", self.ram, AVAIL + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.ram, AVAIL + 2, self.avail_idx)

    def add_tx(self, pieces: list[bytes]) -> int:
        """One TX chain, one descriptor per piece; returns the head."""
        head = self.chain([(self.put(p), len(p), 0) for p in pieces])
        self.publish(head)
        return head

    def add_rx(self, sizes: list[int]) -> list[tuple[int, int]]:
        """One single-buffer RX chain per size; returns (head, gpa) of each."""
        out = []
        for n in sizes:
            gpa = self.alloc(n)
            head = self.chain([(gpa, n, VRING_DESC_F_WRITE)])
            self.publish(head)
            out.append((head, gpa))
        return out

    def used(self) -> list[tuple[int, int]]:
        """Used elements (id, len) published since the last call."""
        (idx,) = struct.unpack_from("<H", self.ram, USED + 2)
        out = []
        while self.used_seen != idx:
            out.append(struct.unpack_from("<II", self.ram,
                                          USED + 4 + 8 * (self.used_seen % self.num)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out


@pytest.fixture
def guest():
    g = FakeGuest()
    yield g
    g.close()


@pytest.fixture
def fake_tap():
    """(ours, peer): a packet socketpair standing in for a tap."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def udp_frame(n: int, check: str = "full") -> bytes:
    return l4_frame(4, IPPROTO_UDP, bytes(range(256)) * (n // 256) + bytes(n % 256),
                    check=check).frame


def recv_all(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


# ---- memory table ----

def test_guest_memory_maps_and_closes_fds():
    fd = os.memfd_create("vn-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 1 << 20)
    dup1, dup2 = os.dup(fd), os.dup(fd)
    with GuestMemory() as mem:
        mem.map([MemRegion(dup1, 0x10000, 0x80000, 0x5000_0000, 0),
                 MemRegion(dup2, 0x90000, 0x1000, 0x6000_0000, 0x81234)])
        for d in (dup1, dup2):
            with pytest.raises(OSError) as e:
                os.fstat(d)
            assert e.value.errno == errno.EBADF
        regs = mem.regions
        assert [(r.gpa, r.size, r.mmap_offset) for r in regs] == [
            (0x10000, 0x80000, 0), (0x90000, 0x1000, 0x81234)]
        assert not any(r.sealed for r in regs)
    assert mem.regions == []
    os.close(fd)


def test_guest_memory_refusals_are_all_or_nothing():
    fd = os.memfd_create("vn-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, 1 << 20)
    mem = GuestMemory()
    good = MemRegion(os.dup(fd), 0, 0x1000, 0x1000, 0)
    beyond = MemRegion(os.dup(fd), 0x10000, 1 << 20, 0x20000, 0x1000)   # past the file
    with pytest.raises(OSError) as e:
        mem.map([good, beyond])
    assert e.value.errno == errno.ENXIO
    assert mem.regions == []                 # the good one was undone
    mem.map([MemRegion(os.dup(fd), 0, 0x2000, 0x1000, 0)])
    for bad, err in ((MemRegion(os.dup(fd), 0x1000, 0x1000, 0x9000, 0), errno.EEXIST),
                     (MemRegion(os.dup(fd), 0x8000, 0, 0x9000, 0), errno.EINVAL),
                     (MemRegion(os.dup(fd), 2**64 - 0x1000, 0x2000, 0x9000, 0), errno.EOVERFLOW)):
        with pytest.raises(OSError) as e:
            mem.add(bad)
        assert e.value.errno == err
    r, w = os.pipe()
    with pytest.raises(OSError) as e:
        mem.add(MemRegion(r, 0x8000, 0x1000, 0x9000, 0))
    assert e.value.errno == errno.ENODEV
    os.close(w)
    with pytest.raises(ValueError):
        mem.add(MemRegion(os.dup(fd), -1, 0x1000, 0x9000, 0))
    mem.remove(0, 0x2000)
    with pytest.raises(OSError) as e:
        mem.remove(0, 0x2000)
    assert e.value.errno == errno.ENOENT
    os.close(fd)


def test_sealed_region_reported(guest):
    assert [r.sealed for r in guest.mem.regions] == [True]


def test_vring_setup_refusals(guest):
    vq = Vring()
    for num in (0, 3, 100, 65536):
        with pytest.raises(OSError) as e:
            vq.setup(guest.mem, num, UADDR + DESC, UADDR + AVAIL, UADDR + USED)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:       # used ring outside guest memory
        vq.setup(guest.mem, 256, UADDR + DESC, UADDR + AVAIL, UADDR + RAM_SIZE - 64)
    assert e.value.errno == errno.EFAULT
    with pytest.raises(OSError) as e:       # misaligned descriptor table
        vq.setup(guest.mem, 256, UADDR + DESC + 8, UADDR + AVAIL, UADDR + USED)
    assert e.value.errno == errno.EINVAL
    assert not vq.ready
    vq.setup(guest.mem, 256, UADDR + DESC, UADDR + AVAIL, UADDR + USED, base=9)
    assert vq.ready and vq.num == 256 and vq.last_avail_idx == 9
    assert vq.reset() == 9 and not vq.ready


def test_stale_memory_is_refused(guest, fake_tap):
    tx = TxPath(guest.vring, guest.mem, fake_tap[0].fileno(), TxConfig())
    guest.mem.add(MemRegion(os.dup(guest.fd), GPA + RAM_SIZE, 0x1000, UADDR + RAM_SIZE, 0))
    with pytest.raises(OSError) as e:
        tx.drain()
    assert e.value.errno == errno.ESTALE
    guest.vring.translate(guest.mem)
    assert tx.drain() == 0


# ---- TX ----

def test_tx_plain_scattered(guest, fake_tap):
    ours, peer = fake_tap
    frame = udp_frame(700)
    hdr = VnetHdr().pack(HDR)
    # Header split 4 + 8, frame in three pieces.
    guest.add_tx([hdr[:4], hdr[4:], frame[:20], frame[20:100], frame[100:]])
    tx = TxPath(guest.vring, guest.mem, ours.fileno(), TxConfig())
    assert tx.drain() == 1
    assert recv_all(peer) == [hdr + frame]
    assert guest.used() == [(0, 0)]
    st = tx.stats.as_dict()
    assert st["packets"] == 1 and st["bytes"] == len(frame) and st["chains"] == 1
    assert set(st["drops"]) == set(DROP_NAMES.values()) and not any(st["drops"].values())


def test_tx_software_tso_matches_offload_engine(guest, fake_tap):
    ours, peer = fake_tap
    built = l4_frame(4, IPPROTO_TCP, bytes(range(256)) * 12)
    hdr = VnetHdr(**built.hdr_fields(gso_type=GSO_TCPV4, gso_size=1000))
    guest.add_tx([hdr.pack(HDR), built.frame[:50], built.frame[50:]])
    tx = TxPath(guest.vring, guest.mem, ours.fileno(), TxConfig(tap_offloads=0))
    assert tx.drain() == 1
    got = recv_all(peer)
    want = segment(hdr, built.frame)
    assert len(got) == len(want) == 4
    assert [g[HDR:] for g in got] == want
    assert all(g[:HDR] == bytes(HDR) and verify(g[HDR:]) for g in got)
    st = tx.stats.as_dict()
    assert (st["sw_segmented"], st["sw_segments"], st["csum_completed"]) == (1, 4, 1)
    assert st["tso_passthrough"] == 0


def test_tx_config_from_caps_plan():
    from vmdnet.tun.caps import TapCaps, parse_offloads, tx_plan

    cfg = TxConfig.from_plan(tx_plan(TapCaps(offloads=parse_offloads("csum,tso4,uso"))), 12)
    assert cfg.tap_has_vnet_hdr and cfg.tap_offloads == 0x01 | 0x02 | 0x20 | 0x40
    cfg = TxConfig.from_plan(tx_plan(TapCaps(vnet_hdr=False)), 12)
    assert not cfg.tap_has_vnet_hdr and cfg.tap_offloads == 0
    with pytest.raises(ValueError):
        TxConfig(hdr_sz=11)


def test_tx_broken_ring_raises(guest, fake_tap):
    ours, peer = fake_tap
    guest.add_tx([VnetHdr().pack(HDR), udp_frame(64)])
    guest.publish(guest.num)                # head index out of range
    tx = TxPath(guest.vring, guest.mem, ours.fileno(), TxConfig())
    with pytest.raises(RingBroken) as e:
        tx.drain()
    assert e.value.reason == RingError.HEAD and guest.vring.broken == RingError.HEAD
    assert len(recv_all(peer)) == 1         # the good chain before it went out
    assert tx.stats.as_dict()["ring_errors"]["head"] == 1
    with pytest.raises(RingBroken):
        guest.vring.notify_enable()


def test_tx_bad_packets_dropped_and_counted(guest, fake_tap):
    ours, peer = fake_tap
    bad = VnetHdr(flags=0, gso_type=GSO_TCPV4, gso_size=100).pack(HDR)    # GSO without csum
    guest.add_tx([bad, udp_frame(300)])
    guest.add_tx([VnetHdr().pack(HDR)[:6]])                               # shorter than header
    head = guest.chain([(GPA + RAM_SIZE + 0x1000, 100, 0)])               # outside memory
    guest.publish(head)
    tx = TxPath(guest.vring, guest.mem, ours.fileno(), TxConfig())
    assert tx.drain() == 3
    drops = tx.stats.as_dict()["drops"]
    assert drops["bad_gso_no_csum"] == drops["hdr_short"] == drops["desc_addr"] == 1
    assert [ln for _, ln in guest.used()] == [0, 0, 0]
    assert recv_all(peer) == []
    assert guest.vring.broken is None


# ---- RX ----

def test_rx_mergeable_direct_and_no_buffers(guest, fake_tap):
    ours, peer = fake_tap
    frame = udp_frame(2400)
    posted = guest.add_rx([1000] * 4)
    rx = RxPath(guest.vring, guest.mem, ours.fileno(), RxConfig(max_pkt=4000))
    peer.send(VnetHdr().pack(HDR) + frame)
    assert rx.fill() == 1
    used = guest.used()
    assert [u[0] for u in used] == [h for h, _ in posted[:3]]
    data = b"".join(guest.read(gpa, ln) for (_, gpa), (_, ln) in zip(posted[:3], used, strict=True))
    assert VnetHdr.unpack(data, HDR).num_buffers == 3
    assert data[HDR:] == frame
    # One buffer left, a maximal packet's worth wanted: bounce; too big: parked.
    peer.send(VnetHdr().pack(HDR) + frame)
    assert rx.fill() == NO_BUFFERS
    assert rx.parked_len == HDR + len(frame)
    guest.add_rx([1000] * 2)
    assert rx.fill() == 1 and rx.parked_len == 0
    assert len(guest.used()) == 3
    # Nothing posted: nothing read.
    peer.send(VnetHdr().pack(HDR) + frame)
    assert rx.fill() == NO_BUFFERS and rx.parked_len == 0
    assert rx.discard() == 1
    st = rx.stats.as_dict()
    assert st["packets"] == 2 and st["rx_buffers"] == 6 and st["rx_parked"] == 1
    assert st["drops"]["rx_no_buffers"] == 1


def test_rx_without_vnet_hdr_sets_data_valid(guest, fake_tap):
    ours, peer = fake_tap
    frame = udp_frame(200)
    (_, gpa), = guest.add_rx([2048])
    rx = RxPath(guest.vring, guest.mem, ours.fileno(),
                RxConfig(tap_has_vnet_hdr=False, mrg_rxbuf=False, guest_csum=True))
    peer.send(frame)
    assert rx.fill() == 1
    (_, ln), = guest.used()
    got = guest.read(gpa, ln)
    assert VnetHdr.unpack(got, HDR) == VnetHdr(flags=2, num_buffers=1)
    assert got[HDR:] == frame
    with pytest.raises(ValueError):
        RxConfig(hdr_sz=10, mrg_rxbuf=True)


# ---- threads: the GIL is released during C calls ----

@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                    reason="syscall numbers known for x86_64 and aarch64 only")
def test_gil_released_during_batches():
    """A batch blocked in the kernel must not hold the GIL.

    In a child process (a GIL held forever would hang it; the parent's
    timeout turns that into a failure): an RX fill on a *blocking* socket
    sits in read(); the main thread waits until /proc shows that thread in
    read/readv, then sends the packet that releases it.  The main thread can
    only get there if the C call let go of the GIL.
    """
    script = textwrap.dedent(f"""
        import os, socket, sys, threading
        sys.path[:0] = {sys.path[:3]!r}
        from test_datapath import FakeGuest, HDR, udp_frame
        from vmdnet.offload import VnetHdr
        from vmdnet.vionet.datapath import RxConfig, RxPath
        READS = {{"x86_64": (0, 19), "aarch64": (63, 65)}}[{platform.machine()!r}]
        g = FakeGuest()
        g.add_rx([2048])
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rx = RxPath(g.vring, g.mem, ours.fileno(), RxConfig(mrg_rxbuf=False, max_pkt=1500))
        result, tid = [], []
        def run():
            tid.append(threading.get_native_id())
            result.append(rx.fill())
        t = threading.Thread(target=run)
        t.start()
        while not tid:
            pass
        path = f"/proc/self/task/{{tid[0]}}/syscall"
        for _ in range(10_000_000):
            with open(path) as f:
                nr = f.read().split()[0]
            if nr.isdigit() and int(nr) in READS:
                break
        else:
            sys.exit("the RX thread never blocked in read")
        peer.send(VnetHdr().pack(HDR) + udp_frame(100))
        t.join()
        print("filled", result[0])
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__)] + sys.path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=env, cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "filled 1"
