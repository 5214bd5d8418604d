"""vmdnet.vionet.datapath against real taps, with the kernel as the oracle.

In a namespace of its own (tests/netns.py): tap A (ours, IFF_VNET_HDR, 12
bytes), tap B (the test's, vnet header, TUNSETOFFLOAD 0) and tap C (ours,
no vnet header) on one bridge.  What the data path writes to A or C comes out
of B segmented and checksummed by the kernel; what the test writes to B
reaches A and C for RX.  Packets are matched by a per-test source MAC, and a
fence frame written after a batch marks the end of its output (the bridge
forwards within the write), so no timing is involved; timeouts only bound a
broken setup.

TX is checked against `TapPair.kernel_segment`: the same header and frame
written straight to tap A must give byte-identical packets on tap B, whether
the data path passed the offload through or did it in software.
"""

from __future__ import annotations

import os
import select
import struct
import time

import pytest
from netns import (
    FENCE_ETHERTYPE,
    FENCE_MAGIC,
    READ_MAX,
    VNET_HDR_SZ,
    TapPair,
    open_tap_pair,
    root_skip_reason,
)
from pktlib import GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, IPPROTO_TCP, IPPROTO_UDP, l4_frame
from test_datapath import HDR, FakeGuest

from vmdnet.offload import VnetHdr, verify
from vmdnet.vionet.datapath import RxConfig, RxPath, TxConfig, TxPath

_skip = root_skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.oracle,
              pytest.mark.skipif(_skip is not None, reason=_skip or "")]

# Bound on waiting for a frame that must come (a broken setup, not a verdict).
TIMEOUT = 5.0
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02


class Net:
    """The tap pair plus tap C (no vnet header) on the same bridge."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        from vmdnet.tun import open_tap

        self.pair: TapPair = open_tap_pair("dp")
        self.c = None
        try:
            with self.pair.ns.entered():
                self.c = open_tap("vnC", vnet_hdr=False, nonblock=True)
                with IPRoute() as ipr:
                    br = ipr.link_lookup(ifname=self.pair.bridge)[0]
                    idx = ipr.link_lookup(ifname="vnC")[0]
                    ipr.link("set", index=idx, master=br)
                    ipr.link("set", index=idx, state="up")
            self._wait_c_ready()
        except BaseException:
            self.close()
            raise

    def _wait_c_ready(self) -> None:
        src = self.pair.next_mac()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                fence_collect(self, self.c.fd, b"", src, timeout=0.05)
                return
            except TimeoutError:
                continue
        raise TimeoutError("tap C never forwarded")

    def drain(self) -> None:
        self.pair.drain()
        while True:
            try:
                os.read(self.c.fd, READ_MAX)
            except BlockingIOError:
                return

    def close(self) -> None:
        if self.c is not None:
            self.c.close()
        self.pair.close()
        self.pair.ns.close()


_tokens = iter(range(1, 1 << 30))


def fence_collect(net: Net, write_fd: int, prefix: bytes, src: bytes,
                  timeout: float = TIMEOUT) -> list[bytes]:
    """Write a fence from `src` to `write_fd`; return tap B's frames from `src` before it."""
    token = next(_tokens)
    body = FENCE_MAGIC + struct.pack("!Q", token)
    fence = (bytes.fromhex("020000000002") + src + struct.pack("!H", FENCE_ETHERTYPE)
             + body.ljust(46, b"\0"))
    os.write(write_fd, prefix + fence)
    deadline = time.monotonic() + timeout
    out = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"fence {token} not seen on tap B")
        if not select.select([net.pair.b.fd], [], [], left)[0]:
            continue
        raw = os.read(net.pair.b.fd, READ_MAX)[VNET_HDR_SZ:]
        if raw[6:12] != src:
            continue
        if raw[12:14] == struct.pack("!H", FENCE_ETHERTYPE) and raw[14:30] == body[:16]:
            return out
        out.append(raw)


@pytest.fixture(scope="module")
def net():
    n = Net()
    yield n
    n.close()


@pytest.fixture
def guest(net):
    net.drain()
    g = FakeGuest()
    yield g
    g.close()


def with_src(frame: bytes, src: bytes) -> bytes:
    return frame[:6] + src + frame[12:]


# name -> (ip version, proto, payload size, gso_type, gso_size, needs_csum)
TX_CASES = {
    "plain_udp4": (4, IPPROTO_UDP, 300, 0, 0, False),
    "csum_udp4": (4, IPPROTO_UDP, 1000, 0, 0, True),
    "csum_tcp6": (6, IPPROTO_TCP, 1200, 0, 0, True),
    "tso4": (4, IPPROTO_TCP, 5000, GSO_TCPV4, 1448, True),
    "tso6": (6, IPPROTO_TCP, 4000, GSO_TCPV6, 1000, True),
    "uso4": (4, IPPROTO_UDP, 3000, GSO_UDP_L4, 1200, True),
}


def tx_case(name: str, src: bytes) -> tuple[VnetHdr, bytes]:
    version, proto, size, gso_type, gso_size, csum = TX_CASES[name]
    payload = bytes((i * 13 + 5) & 0xFF for i in range(size))
    built = l4_frame(version, proto, payload, check="seed" if csum else "full")
    fields = built.hdr_fields(gso_type=gso_type, gso_size=gso_size, needs_csum=csum)
    if not csum:
        fields["hdr_len"] = 0
    return VnetHdr(**fields), with_src(built.frame, src)


@pytest.mark.parametrize("offloads", ["passthrough", "software"])
@pytest.mark.parametrize("case", sorted(TX_CASES))
def test_tx_equals_kernel(net, guest, case, offloads):
    src = net.pair.next_mac()
    hdr, frame = tx_case(case, src)
    want = net.pair.kernel_segment(hdr, frame)
    assert want, "the kernel dropped the reference packet"
    # Scattered as a guest might: header alone, the frame in two pieces.
    guest.add_tx([hdr.pack(HDR), frame[:60], frame[60:]])
    cfg = TxConfig() if offloads == "passthrough" else TxConfig(tap_offloads=0)
    tx = TxPath(guest.vring, guest.mem, net.pair.a.fd, cfg)
    assert tx.drain() == 1
    got = fence_collect(net, net.pair.a.fd, bytes(VNET_HDR_SZ), src)
    assert got == want
    assert guest.used() == [(0, 0)]
    st = tx.stats.as_dict()
    assert st["packets"] == 1 and not any(st["drops"].values())
    offloaded = hdr.gso_type != 0
    if offloads == "software":
        assert st["sw_segmented"] == int(offloaded and len(want) > 1)
        assert st["csum_completed"] == int(bool(hdr.flags))
        assert all(verify(p) for p in got)
    else:
        assert st["sw_segmented"] == st["csum_completed"] == 0
        assert st["csum_passthrough"] == int(bool(hdr.flags))


@pytest.mark.parametrize("case", ["plain_udp4", "csum_udp4", "tso4", "uso4"])
def test_tx_to_tap_without_vnet_hdr(net, guest, case):
    src = net.pair.next_mac()
    hdr, frame = tx_case(case, src)
    want = net.pair.kernel_segment(hdr, frame)
    guest.add_tx([hdr.pack(HDR) + frame])
    tx = TxPath(guest.vring, guest.mem, net.c.fd, TxConfig(tap_has_vnet_hdr=False))
    assert tx.drain() == 1
    assert fence_collect(net, net.c.fd, b"", src) == want


def inject(net: Net, frames: list[bytes], hdr: VnetHdr | None = None) -> None:
    """Write frames into tap B: the bridge delivers them to A and C within the write."""
    for f in frames:
        os.write(net.pair.b.fd, (hdr or VnetHdr()).pack(VNET_HDR_SZ) + f)


def delivered(guest: FakeGuest, bufs: dict[int, int], src: bytes) -> list[tuple[VnetHdr, bytes]]:
    """Reassemble the packets in the used ring (num_buffers at a time); keep those from src."""
    used = guest.used()
    out, i = [], 0
    while i < len(used):
        head, ln = used[i]
        first = guest.read(bufs[head], ln)
        hdr = VnetHdr.unpack(first, HDR)
        n = max(hdr.num_buffers, 1)
        data = first + b"".join(guest.read(bufs[h], ln) for h, ln in used[i + 1:i + n])
        i += n
        if data[HDR + 6:HDR + 12] == src:
            out.append((hdr, data[HDR:]))
    return out


@pytest.mark.parametrize("max_pkt", [HDR + 9000, 0], ids=["direct", "bounce"])
def test_rx_mergeable(net, guest, max_pkt):
    src = net.pair.next_mac()
    frames = [with_src(l4_frame(4, IPPROTO_UDP, bytes([n & 0xFF]) * n).frame, src)
              for n in (18, 500, 1400, 1472, 3000, 8000)]
    bufs = dict(guest.add_rx([1536] * 40))
    inject(net, frames)
    rx = RxPath(guest.vring, guest.mem, net.pair.a.fd, RxConfig(max_pkt=max_pkt))
    n = rx.fill()
    got = delivered(guest, bufs, src)
    assert n >= len(frames)
    assert [f for _, f in got] == frames
    assert all(h.flags == 0 and h.gso_type == 0 for h, _ in got)
    assert [h.num_buffers for h, _ in got] == [-(-(HDR + len(f)) // 1536) for f in frames]


def test_rx_gso_super_packet(net, guest):
    from vmdnet.tun import set_offload

    src = net.pair.next_mac()
    hdr, frame = tx_case("tso4", src)
    bufs = dict(guest.add_rx([2048] * 8))
    set_offload(net.pair.a.fd, TUN_F_CSUM | TUN_F_TSO4)
    try:
        inject(net, [frame], hdr)
        rx = RxPath(guest.vring, guest.mem, net.pair.a.fd, RxConfig(max_pkt=HDR + 16000))
        assert rx.fill() >= 1
    finally:
        set_offload(net.pair.a.fd, 0)
    (got_hdr, got), = delivered(guest, bufs, src)
    assert got == frame
    assert (got_hdr.gso_type, got_hdr.gso_size) == (GSO_TCPV4, hdr.gso_size)
    assert got_hdr.flags & 1 and got_hdr.csum_start == hdr.csum_start
    assert got_hdr.num_buffers == -(-(HDR + len(frame)) // 2048)


def test_rx_one_chain_truncated_packet_dropped(net, guest):
    """Without MRG_RXBUF a packet larger than the chain is dropped, the chain kept.

    The tap is read straight into the 300-byte chain (max_pkt is below it)
    and reports the packet's real size, which is how the overrun is seen.
    """
    src = net.pair.next_mac()
    big = with_src(l4_frame(4, IPPROTO_UDP, b"x" * 1000).frame, src)
    small = with_src(l4_frame(4, IPPROTO_UDP, b"y" * 100).frame, src)
    (head, gpa), = guest.add_rx([300])
    inject(net, [big, small])
    rx = RxPath(guest.vring, guest.mem, net.pair.a.fd,
                RxConfig(mrg_rxbuf=False, max_pkt=HDR + 200))
    assert rx.fill() == 1
    (uhead, ln), = guest.used()
    assert uhead == head and guest.read(gpa + HDR, ln - HDR) == small
    assert rx.stats.as_dict()["drops"]["rx_truncated"] == 1


def test_rx_from_tap_without_vnet_hdr(net, guest):
    src = net.pair.next_mac()
    good = with_src(l4_frame(4, IPPROTO_TCP, b"z" * 700, check="full").frame, src)
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    bufs = dict(guest.add_rx([2048] * 4))
    inject(net, [good, bytes(bad)])
    rx = RxPath(guest.vring, guest.mem, net.c.fd,
                RxConfig(tap_has_vnet_hdr=False, guest_csum=True))
    assert rx.fill() >= 2
    got = delivered(guest, bufs, src)
    assert [f for _, f in got] == [good, bytes(bad)]
    assert [h.flags for h, _ in got] == [2, 0]          # DATA_VALID only when it checks
