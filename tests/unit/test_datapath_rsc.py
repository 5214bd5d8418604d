"""Receive coalescing in the C RX path (vn_rx_fill with a coalescer), no root needed.

The guest is test_datapath.FakeGuest; a SOCK_SEQPACKET socketpair stands in
for the tap.  These pin the cases where the guest's buffers are fewer than a
maximal packet: coalescing must still read, and an output that does not fit
yet must be visible to the RX thread as parked (it waits for buffers, not the
tap) and be delivered when buffers come.
"""

from __future__ import annotations

from oracle.test_rsc_gro_streams import TcpFlow
from test_datapath import HDR, fake_tap, guest  # noqa: F401  (fixtures)

from vmdnet.offload import Coalescer, VnetHdr
from vmdnet.vionet.datapath import NO_BUFFERS, RxConfig, RxPath

SEGS = 3
MSS = 1448


def push_segments(peer, frames: list[bytes]) -> None:
    for f in frames:
        peer.send(VnetHdr().pack(HDR) + f)


def received(guest, posted, used) -> bytes:  # noqa: F811
    gpas = dict(posted)
    return b"".join(guest.read(gpas[i], ln) for i, ln in used)


def test_coalesces_with_a_ring_smaller_than_a_maximal_packet(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    posted = guest.add_rx([2048] * 8)                   # 16 KiB: less than 64 KiB
    rx = RxPath(guest.vring, guest.mem, ours.fileno(), RxConfig(mrg_rxbuf=True))
    rx.set_coalescer(Coalescer(mode="gso"))
    frames = TcpFlow().data(SEGS, size=MSS)
    push_segments(peer, frames)
    assert rx.fill() in (0, NO_BUFFERS)                 # read and held, nothing due yet
    assert rx.coalescer.held == 1
    assert rx.flush_coalesced() == 1
    used = guest.used()
    data = received(guest, posted, used)
    hdr = VnetHdr.unpack(data[:HDR])
    assert hdr.gso_type == 1 and hdr.gso_size == MSS and hdr.num_buffers == len(used)
    unit = data[HDR:]
    assert len(unit) == len(frames[0]) + (SEGS - 1) * MSS
    assert unit[-MSS:] == frames[-1][-MSS:]


def test_output_waiting_for_buffers_is_parked_then_delivered(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    guest.add_rx([2048] * 2)                            # 4 KiB: the unit needs more
    rx = RxPath(guest.vring, guest.mem, ours.fileno(), RxConfig(mrg_rxbuf=True))
    rx.set_coalescer(Coalescer(mode="gso"))
    push_segments(peer, TcpFlow().data(SEGS, size=MSS))
    rx.fill()
    assert rx.flush_coalesced() == 0
    assert rx.parked_len == HDR + 14 + 20 + 20 + SEGS * MSS
    guest.add_rx([2048] * 2)
    assert rx.fill() == 1
    assert rx.parked_len == 0
    assert sum(ln for _, ln in guest.used()) == HDR + 14 + 20 + 20 + SEGS * MSS
