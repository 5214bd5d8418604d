"""Locked lladdr, DHCP intercept and frame injection in the C data path (no root needed).

The guest is tests/unit/test_datapath.py's FakeGuest (a memfd mapped as a
VMM's); a SOCK_SEQPACKET socketpair stands in for the tap.  Every check looks
at what came out of the tap side or into the guest's buffers, and at the
counters of struct vn_stats.
"""

from __future__ import annotations

import select
import struct

import pytest
from pktlib import IPPROTO_UDP, MAC_A, MAC_B, eth, l4_frame
from test_datapath import HDR, fake_tap, guest, recv_all, udp_frame  # noqa: F401  (fixtures)

from vmdnet.offload import Coalescer, VnetHdr, verify
from vmdnet.offload import complete_checksum as complete
from vmdnet.vionet.datapath import PacketRing, RxConfig, RxPath, TxConfig, TxPath

BROADCAST = b"\xff" * 6
MCAST_V4 = bytes.fromhex("01005e000001")
ETH_P_ARP = 0x0806


def arp(src: bytes, sha: bytes, vlans: tuple[int, ...] = (), hlen: int = 6) -> bytes:
    """An ARP request from Ethernet source `src` naming `sha` as its sender."""
    body = struct.pack("!HHBBH", 1, 0x0800, hlen, 4, 1) + sha + bytes([198, 18, 0, 1])
    body += bytes(6) + bytes([198, 18, 0, 2])
    return eth(BROADCAST, src, ETH_P_ARP, vlans) + body


def with_src(frame: bytes, src: bytes, dst: bytes | None = None) -> bytes:
    return (dst or frame[:6]) + src + frame[12:]


def send_tx(guest, frames: list[bytes]) -> None:  # noqa: F811
    for f in frames:
        guest.add_tx([VnetHdr().pack(HDR), f])


def locked_tx(guest, ours) -> TxPath:  # noqa: F811
    return TxPath(guest.vring, guest.mem, ours.fileno(), TxConfig(lladdr=MAC_A, locked=True))


# ---- TX: locked lladdr ----

def test_tx_lock_passes_own_frames_drops_spoofed(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    good = udp_frame(300)                               # source MAC_A
    good_arp = arp(MAC_A, MAC_A)
    spoof_src = with_src(udp_frame(300), MAC_B)
    spoof_arp = arp(MAC_A, MAC_B)                        # right source, forged sender
    send_tx(guest, [good, spoof_src, good_arp, spoof_arp])
    tx = locked_tx(guest, ours)
    assert tx.drain() == 4
    assert recv_all(peer) == [VnetHdr().pack(HDR) + good, VnetHdr().pack(HDR) + good_arp]
    st = tx.stats.as_dict()
    assert st["drops"]["locked_src"] == 1 and st["drops"]["locked_arp"] == 1
    assert st["packets"] == 2 and st["chains"] == 4


@pytest.mark.parametrize("software", [False, True], ids=["passthrough", "software_csum"])
def test_tx_lock_writes_scattered_frames_whole(guest, fake_tap, software):  # noqa: F811
    """The checked head is written from vionet's copy, the rest from guest memory."""
    ours, peer = fake_tap
    built = l4_frame(4, IPPROTO_UDP, bytes(range(256)) * 4)       # seed checksum
    hdr = VnetHdr(**built.hdr_fields())
    f = built.frame
    pieces = [f[:10], f[10:100], f[100:300], f[300:]]               # peek ends inside one
    guest.add_tx([hdr.pack(HDR), *pieces])
    guest.add_tx([hdr.pack(HDR), f[:6] + MAC_B + f[12:]])             # spoofed: dropped
    tx = TxPath(guest.vring, guest.mem, ours.fileno(),
                TxConfig(tap_offloads=0 if software else 0x7F, lladdr=MAC_A, locked=True))
    assert tx.drain() == 2
    (got,) = recv_all(peer)
    if software:
        assert got == bytes(HDR) + complete(hdr, f) and verify(got[HDR:])
    else:
        assert got == hdr.pack(HDR) + f
    assert tx.stats.as_dict()["drops"]["locked_src"] == 1


def test_tx_lock_sees_arp_behind_vlan_tags(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    send_tx(guest, [arp(MAC_A, MAC_B, vlans=(5,)), arp(MAC_A, MAC_B, vlans=(5, 6)),
                    arp(MAC_A, MAC_A, vlans=(5, 6)), arp(MAC_A, MAC_A, hlen=8)])
    tx = locked_tx(guest, ours)
    assert tx.drain() == 4
    got = recv_all(peer)
    assert got == [VnetHdr().pack(HDR) + arp(MAC_A, MAC_A, vlans=(5, 6))]
    # Forged sender behind one and two tags; a non-Ethernet-sized sender refused.
    assert tx.stats.as_dict()["drops"]["locked_arp"] == 3


def test_tx_lock_three_vlan_tags_refused(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    frame = MAC_B + MAC_A
    for vid in (1, 2, 3):
        frame += struct.pack("!HH", 0x8100, vid)
    frame += struct.pack("!H", ETH_P_ARP) + bytes(28)
    send_tx(guest, [frame])
    tx = locked_tx(guest, ours)
    assert tx.drain() == 1
    assert recv_all(peer) == []
    assert tx.stats.as_dict()["drops"]["locked_arp"] == 1


def test_tx_unlocked_lets_any_source_through(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    frames = [with_src(udp_frame(100), MAC_B), arp(MAC_A, MAC_B)]
    send_tx(guest, frames)
    tx = TxPath(guest.vring, guest.mem, ours.fileno(), TxConfig(lladdr=MAC_A))
    assert tx.drain() == 2
    assert len(recv_all(peer)) == 2
    assert not any(tx.stats.as_dict()["drops"].values())


def test_lock_needs_lladdr():
    with pytest.raises(ValueError):
        TxConfig(locked=True)
    with pytest.raises(ValueError):
        RxConfig(lladdr=b"\x02", locked=False)


# ---- RX: locked lladdr ----

@pytest.mark.parametrize("vnet_hdr,rsc", [(True, False), (False, False), (True, True)],
                         ids=["vnet_hdr", "no_vnet_hdr", "coalescing"])
def test_rx_lock_drops_unicast_to_others(guest, fake_tap, vnet_hdr, rsc):  # noqa: F811
    ours, peer = fake_tap
    mine = with_src(udp_frame(200), MAC_A, dst=MAC_B)
    to_other = with_src(udp_frame(200), MAC_A, dst=bytes.fromhex("020000000009"))
    bcast = with_src(udp_frame(200), MAC_A, dst=BROADCAST)
    mcast = with_src(udp_frame(200), MAC_A, dst=MCAST_V4)
    posted = guest.add_rx([2048] * 4)
    cfg = RxConfig(tap_has_vnet_hdr=vnet_hdr, mrg_rxbuf=True, max_pkt=2048,
                   lladdr=MAC_B, locked=True)
    rx = RxPath(guest.vring, guest.mem, ours.fileno(), cfg)
    if rsc:
        rx.set_coalescer(Coalescer(mode="gso"))      # every frame read into its buffer
    for f in (to_other, mine, to_other, bcast, mcast):
        peer.send((VnetHdr().pack(HDR) if vnet_hdr else b"") + f)
    assert rx.fill() == 3
    used = guest.used()
    got = [guest.read(gpa, ln)[HDR:] for (_, gpa), (_, ln) in zip(posted, used, strict=False)]
    assert got == [mine, bcast, mcast]
    assert rx.stats.as_dict()["drops"]["locked_dst"] == 2


def test_rx_lock_refused_frame_never_reaches_guest_memory(guest, fake_tap):  # noqa: F811
    """Posted buffers big enough for a direct read: a locked queue still reads through
    its own buffer, so a frame for another MAC is not left where the guest could read it."""
    ours, peer = fake_tap
    posted = guest.add_rx([2048] * 2)
    rx = RxPath(guest.vring, guest.mem, ours.fileno(),
                RxConfig(max_pkt=2048, lladdr=MAC_B, locked=True))
    secret = with_src(udp_frame(200), MAC_A, dst=bytes.fromhex("020000000009"))
    peer.send(VnetHdr().pack(HDR) + secret)
    assert rx.fill() == 0
    assert all(guest.read(gpa, 2048) == bytes(2048) for _, gpa in posted)
    assert guest.used() == [] and rx.stats.as_dict()["drops"]["locked_dst"] == 1


def test_rx_unlocked_delivers_everything(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    guest.add_rx([2048])
    rx = RxPath(guest.vring, guest.mem, ours.fileno(), RxConfig(lladdr=MAC_B, max_pkt=2048))
    peer.send(VnetHdr().pack(HDR) + with_src(udp_frame(100), MAC_A, dst=MAC_A))
    assert rx.fill() == 1


# ---- DHCP intercept (TX) and injection (RX) ----

def dhcp_frame(n: int = 300, dport: int = 67) -> bytes:
    built = l4_frame(4, IPPROTO_UDP, bytes(n), check="full")
    f = bytearray(built.frame)
    struct.pack_into("!HH", f, 14 + 20, 68, dport)       # UDP ports (checksum not re-made)
    return bytes(f)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_tx_intercepts_dhcp_only(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    ring = PacketRing()
    try:
        other = dhcp_frame(dport=68)
        dhcp = dhcp_frame()
        send_tx(guest, [other, dhcp])
        tx = locked_tx(guest, ours)
        tx.set_intercept(ring)
        assert tx.drain() == 2
        assert recv_all(peer) == [VnetHdr().pack(HDR) + other]
        assert readable(ring.fd)
        ring.clear()
        assert not readable(ring.fd)
        assert ring.drain() == [dhcp]
        assert tx.stats.as_dict()["intercepted"] == 1
        # Off again: DHCP goes to the tap.
        tx.set_intercept(None)
        send_tx(guest, [dhcp])
        assert tx.drain() == 1
        assert recv_all(peer) == [VnetHdr().pack(HDR) + dhcp]
    finally:
        ring.close()


def test_tx_intercept_ring_full_and_spoofed_dhcp(guest, fake_tap):  # noqa: F811
    ours, peer = fake_tap
    ring = PacketRing()
    try:
        send_tx(guest, [dhcp_frame()] * (PacketRing.SLOTS + 2))
        send_tx(guest, [with_src(dhcp_frame(), MAC_B)])            # lock first
        tx = locked_tx(guest, ours)
        tx.set_intercept(ring)
        assert tx.drain() == PacketRing.SLOTS + 3
        st = tx.stats.as_dict()
        assert st["intercepted"] == PacketRing.SLOTS == len(ring)
        assert st["drops"]["intercept_full"] == 2 and st["drops"]["locked_src"] == 1
        assert recv_all(peer) == []
        assert len(ring.drain()) == PacketRing.SLOTS and len(ring) == 0
    finally:
        ring.close()


@pytest.mark.parametrize("guest_csum", [True, False])
def test_rx_injected_frames_go_first(guest, fake_tap, guest_csum):  # noqa: F811
    ours, peer = fake_tap
    ring = PacketRing()
    try:
        injected = with_src(udp_frame(300), MAC_A, dst=MAC_B)
        assert verify(injected)
        from_tap = with_src(udp_frame(100), MAC_A, dst=MAC_B)
        posted = guest.add_rx([2048] * 2)
        rx = RxPath(guest.vring, guest.mem, ours.fileno(),
                    RxConfig(max_pkt=2048, guest_csum=guest_csum, lladdr=MAC_B, locked=True))
        rx.set_inject(ring)
        peer.send(VnetHdr().pack(HDR) + from_tap)
        assert ring.put(injected)
        assert rx.fill() == 2
        used = guest.used()
        got = [guest.read(gpa, ln) for (_, gpa), (_, ln) in zip(posted, used, strict=True)]
        assert got[0][HDR:] == injected and got[1][HDR:] == from_tap
        assert VnetHdr.unpack(got[0], HDR) == VnetHdr(flags=2 if guest_csum else 0,
                                                      num_buffers=1)
        assert rx.stats.as_dict()["injected"] == 1 and len(ring) == 0
    finally:
        ring.close()


def test_rx_injected_frame_waits_for_buffers(guest, fake_tap):  # noqa: F811
    ours, _ = fake_tap
    ring = PacketRing()
    try:
        rx = RxPath(guest.vring, guest.mem, ours.fileno(), RxConfig(max_pkt=2048))
        rx.set_inject(ring)
        frame = udp_frame(100)
        assert ring.put(frame)
        assert rx.fill() < 0 and len(ring) == 1          # NO_BUFFERS: kept
        (_, gpa), = guest.add_rx([2048])
        assert rx.fill() == 1 and len(ring) == 0
        assert guest.read(gpa, HDR + len(frame))[HDR:] == frame
    finally:
        ring.close()


def test_packet_ring_limits():
    ring = PacketRing()
    try:
        with pytest.raises(ValueError):
            ring.put(bytes(PacketRing.SLOT_SIZE + 1))
        assert ring.get() is None
        for i in range(PacketRing.SLOTS):
            assert ring.put(bytes([i]) * 60)
        assert not ring.put(bytes(60))
        assert [f[0] for f in ring.drain()] == list(range(PacketRing.SLOTS))
        # Indexes keep running past the slot count.
        for i in range(3 * PacketRing.SLOTS):
            assert ring.put(bytes([i % 256]) * 10) and ring.get() == bytes([i % 256]) * 10
    finally:
        ring.close()


def test_dhcp_round_trip_through_the_rings(fake_tap):  # noqa: F811
    """Guest TX -> intercept ring -> DhcpResponder -> inject ring -> guest RX, in C and
    the responder's batch, with the reply's checksums approved by vn_verify."""
    import ipaddress

    from test_datapath import FakeGuest
    from test_dhcp import DISCOVER, OFFER, Reply, client_frame

    from vmdnet.vionet.dhcp import DhcpConfig, DhcpServer
    from vmdnet.vionet.responder import DhcpResponder

    ours, peer = fake_tap
    mac = bytes.fromhex("fee1bad00001")
    cfg = DhcpConfig(mac, ipaddress.IPv4Interface("198.18.4.1/31"),
                     ipaddress.IPv4Address("198.18.4.0"))
    responder = DhcpResponder(DhcpServer(cfg), PacketRing(), PacketRing())
    txg, rxg = FakeGuest(), FakeGuest()
    try:
        tx = TxPath(txg.vring, txg.mem, ours.fileno(), TxConfig(lladdr=mac, locked=True))
        tx.set_intercept(responder.intercept)
        rx = RxPath(rxg.vring, rxg.mem, ours.fileno(),
                    RxConfig(max_pkt=2048, guest_csum=True, lladdr=mac, locked=True))
        rx.set_inject(responder.inject)
        (_, gpa), = rxg.add_rx([2048])
        send_tx(txg, [client_frame(DISCOVER, mac=mac)])
        assert tx.drain() == 1 and recv_all(peer) == []
        assert responder.serve_batch(now=0.0) == 1
        assert readable(responder.inject.fd)
        assert rx.fill() == 1
        (_, ln), = rxg.used()
        got = rxg.read(gpa, ln)
        assert VnetHdr.unpack(got, HDR).flags == 2          # DATA_VALID: checksums right
        offer = Reply(got[HDR:])
        assert offer.type == OFFER and offer.yiaddr == cfg.client.ip
        assert responder.stats()["offers"] == 1
    finally:
        txg.close()
        rxg.close()
        responder.stop()
        responder.intercept.close()
        responder.inject.close()
