"""vmdnet.vionet.dhcp: the sans-IO DHCP server, fed whole frames as bytes.

The client side (frames a guest's DHCP client sends, and reading replies)
is written here from RFC 2131/2132 independently of the module.  Reply
checksums are checked with vmdnet.offload.verify (the C checker the RX path
uses to set DATA_VALID).
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pktlib import ref_checksum

from vmdnet.offload import verify
from vmdnet.vionet import dhcp
from vmdnet.vionet.dhcp import DhcpConfig, DhcpServer

GUEST_MAC = bytes.fromhex("fee1bad00001")
OTHER_MAC = bytes.fromhex("fee1bad00002")
GUEST = ipaddress.IPv4Interface("198.18.4.1/31")
ROUTER = ipaddress.IPv4Address("198.18.4.0")
XID = 0x1234ABCD
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)


def cfg(**kw) -> DhcpConfig:
    return DhcpConfig(GUEST_MAC, GUEST, ROUTER, **kw)


def client_frame(msg_type: int | None, *, mac: bytes = GUEST_MAC, flags: int = 0,
                 ciaddr: str = "0.0.0.0", options: bytes = b"", op: int = 1,
                 src: str = "0.0.0.0", dst: str = "255.255.255.255",
                 dport: int = 67, end: bool = True) -> bytes:
    """A client's DHCP message as the guest's TX path would hand it over."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s", op, 1, 6, 0, XID, 0, flags,
                        ipaddress.IPv4Address(ciaddr).packed, bytes(4), bytes(4), bytes(4),
                        mac + bytes(10))
    opts = b"" if msg_type is None else bytes([53, 1, msg_type])
    opts += options + (b"\xff" if end else b"")
    payload = bootp + bytes(192) + b"\x63\x82\x53\x63" + opts
    udp = struct.pack("!HHHH", 68, dport, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                               ipaddress.IPv4Address(src).packed,
                               ipaddress.IPv4Address(dst).packed))
    struct.pack_into("!H", ip, 10, ~ref_checksum(bytes(ip)) & 0xFFFF)
    return b"\xff" * 6 + mac + b"\x08\x00" + bytes(ip) + udp


def opt(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def ip_opt(code: int, addr: str | ipaddress.IPv4Address) -> bytes:
    return opt(code, ipaddress.IPv4Address(addr).packed)


class Reply:
    """A server reply frame, parsed here from the RFCs."""

    def __init__(self, frame: bytes) -> None:
        assert verify(frame), "IPv4 or UDP checksum wrong"
        self.eth_dst, self.eth_src = frame[:6], frame[6:12]
        assert frame[12:14] == b"\x08\x00"
        ip = frame[14:34]
        self.ip_src = ipaddress.IPv4Address(ip[12:16])
        self.ip_dst = ipaddress.IPv4Address(ip[16:20])
        sport, dport, ulen, _ = struct.unpack_from("!HHHH", frame, 34)
        assert (sport, dport) == (67, 68) and ulen == len(frame) - 34
        m = frame[42:]
        assert len(m) >= 300, "shorter than a BOOTP message"
        (self.op, _, _, _, self.xid, _, self.flags, ci, yi, _, _, self.chaddr) = \
            struct.unpack_from("!BBBBIHH4s4s4s4s16s", m)
        self.ciaddr, self.yiaddr = ipaddress.IPv4Address(ci), ipaddress.IPv4Address(yi)
        assert m[236:240] == b"\x63\x82\x53\x63"
        self.options: dict[int, bytes] = {}
        i = 240
        while m[i] != 255:
            self.options[m[i]] = m[i + 2:i + 2 + m[i + 1]]
            i += 2 + m[i + 1]
        self.type = self.options[53][0]

    def u32(self, code: int) -> int:
        return struct.unpack("!I", self.options[code])[0]


def exchange(server: DhcpServer, frame: bytes, now: float = 0.0) -> Reply:
    out = server.receive(frame, now)
    assert out is not None
    return Reply(out)


# ---- DORA and the lease ----------------------------------------------------------------

def test_full_dora_unicast():
    s = DhcpServer(cfg())
    offer = exchange(s, client_frame(DISCOVER))
    assert offer.type == OFFER and offer.op == 2 and offer.xid == XID
    assert offer.yiaddr == GUEST.ip and offer.ciaddr == ipaddress.IPv4Address(0)
    assert offer.chaddr[:6] == GUEST_MAC
    # Broadcast bit clear: unicast to the offered address and the client's MAC.
    assert (offer.eth_dst, offer.ip_dst) == (GUEST_MAC, GUEST.ip)
    assert offer.ip_src == ROUTER
    assert offer.options[1] == bytes([255, 255, 255, 254])
    assert offer.options[3] == ROUTER.packed and offer.options[54] == ROUTER.packed
    assert offer.u32(51) == dhcp.DEFAULT_LEASE_S
    assert offer.u32(58) < offer.u32(59) < offer.u32(51)
    assert not s.lease_active(0)
    ack = exchange(s, client_frame(REQUEST, options=ip_opt(50, GUEST.ip) + ip_opt(54, ROUTER)),
                   now=5.0)
    assert ack.type == ACK and ack.yiaddr == GUEST.ip and ack.u32(51) == dhcp.DEFAULT_LEASE_S
    assert s.lease_active(5.0) and not s.lease_active(5.0 + dhcp.DEFAULT_LEASE_S)
    assert (s.counters["offers"], s.counters["acks"], s.counters["received"]) == (1, 1, 2)


def test_broadcast_flag_gets_broadcast_replies():
    s = DhcpServer(cfg())
    offer = exchange(s, client_frame(DISCOVER, flags=0x8000))
    assert offer.eth_dst == b"\xff" * 6 and offer.ip_dst == ipaddress.IPv4Address("255.255.255.255")
    assert offer.flags == 0x8000


def test_request_for_another_address_is_naked():
    s = DhcpServer(cfg())
    nak = exchange(s, client_frame(REQUEST, options=ip_opt(50, "198.18.9.9")))
    assert nak.type == NAK and nak.yiaddr == ipaddress.IPv4Address(0)
    assert nak.eth_dst == b"\xff" * 6 and nak.ip_dst == ipaddress.IPv4Address("255.255.255.255")
    assert 51 not in nak.options and nak.options[54] == ROUTER.packed
    assert s.counters["naks"] == 1 and not s.lease_active(0)
    # Renewing a wrong ciaddr: NAK too.
    assert exchange(s, client_frame(REQUEST, ciaddr="198.18.4.0")).type == NAK


def test_lease_renewal_extends_it_unicast():
    s = DhcpServer(cfg(lease_s=100))
    exchange(s, client_frame(REQUEST, options=ip_opt(50, GUEST.ip)), now=0.0)   # INIT-REBOOT
    assert s.lease_until == 100.0
    # RENEWING at T1: ciaddr set, no option 50, sent unicast to the server.
    ack = exchange(s, client_frame(REQUEST, ciaddr=str(GUEST.ip), src=str(GUEST.ip),
                                   dst=str(ROUTER)), now=50.0)
    assert ack.type == ACK and ack.ciaddr == GUEST.ip and ack.yiaddr == GUEST.ip
    assert (ack.eth_dst, ack.ip_dst) == (GUEST_MAC, GUEST.ip)
    assert s.lease_until == 150.0 and s.lease_active(120.0)
    assert not s.lease_active(151.0)


def test_request_for_another_server_is_ignored():
    s = DhcpServer(cfg())
    frame = client_frame(REQUEST, options=ip_opt(50, GUEST.ip) + ip_opt(54, "198.18.7.7"))
    assert s.receive(frame, 0) is None
    assert s.counters["ignored"] == 1 and not s.lease_active(0)


def test_release_decline_inform():
    s = DhcpServer(cfg())
    exchange(s, client_frame(REQUEST, options=ip_opt(50, GUEST.ip)))
    assert s.lease_active(1)
    assert s.receive(client_frame(RELEASE, ciaddr=str(GUEST.ip),
                                  options=ip_opt(54, ROUTER)), 1) is None
    assert not s.lease_active(1) and s.counters["releases"] == 1
    exchange(s, client_frame(REQUEST, options=ip_opt(50, GUEST.ip)))
    assert s.receive(client_frame(DECLINE, options=ip_opt(50, GUEST.ip)), 2) is None
    assert not s.lease_active(2) and s.counters["declines"] == 1
    ack = exchange(s, client_frame(INFORM, ciaddr=str(GUEST.ip)))
    assert ack.type == ACK and ack.yiaddr == ipaddress.IPv4Address(0)
    assert 51 not in ack.options and ack.options[1] == bytes([255, 255, 255, 254])
    assert ack.ip_dst == GUEST.ip and s.counters["informs"] == 1
    # INFORM without ciaddr cannot be answered.
    assert s.receive(client_frame(INFORM), 3) is None and s.counters["malformed"] == 1


def test_client_identifier_echoed():
    s = DhcpServer(cfg())
    offer = exchange(s, client_frame(DISCOVER, options=opt(61, b"\x01" + GUEST_MAC)))
    assert offer.options[61] == b"\x01" + GUEST_MAC


def test_other_clients_and_server_messages_ignored():
    s = DhcpServer(cfg())
    assert s.receive(client_frame(DISCOVER, mac=OTHER_MAC), 0) is None
    assert s.receive(client_frame(OFFER), 0) is None                 # a server's message
    assert s.receive(client_frame(DISCOVER, op=2), 0) is None        # BOOTREPLY
    assert s.receive(client_frame(None), 0) is None                  # plain BOOTP
    assert s.receive(client_frame(DISCOVER, dport=68), 0) is None
    assert s.counters["ignored"] == 5 and s.counters["malformed"] == 0


# ---- malformed input --------------------------------------------------------------------

def corrupt(frame: bytes, off: int, value: bytes) -> bytes:
    return frame[:off] + value + frame[off + len(value):]


GOOD = client_frame(DISCOVER)
MALFORMED = {
    "ip checksum": corrupt(GOOD, 24, b"\x00\x00"),
    "ip version": corrupt(GOOD, 14, b"\x65"),
    "ip total length past the frame": corrupt(GOOD, 16, b"\x05\xdc"),
    "udp length past the datagram": corrupt(GOOD, 38, b"\x05\xdc"),
    "udp length below its header": corrupt(GOOD, 38, b"\x00\x04"),
    "magic cookie": corrupt(GOOD, 42 + 236, b"\x00\x00\x00\x00"),
    "hardware type": corrupt(GOOD, 43, b"\x06"),
    "hardware length": corrupt(GOOD, 44, b"\x10"),
    "option past the end": client_frame(DISCOVER, options=b"\x0c\x40abc", end=False),
    "message type length": client_frame(None, options=opt(53, b"\x01\x01")),
    "message type value": client_frame(None, options=opt(53, b"\x09")),
    "requested ip length": client_frame(REQUEST, options=opt(50, b"\x01\x02\x03")),
    "request naming nothing": client_frame(REQUEST),
    "fragment": corrupt(GOOD, 20, b"\x20\x00"),
    "not ipv4": corrupt(GOOD, 12, b"\x86\xdd"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_frames_ignored_and_counted(name):
    s = DhcpServer(cfg())
    frame = MALFORMED[name]
    if name not in ("ip checksum", "fragment", "ip total length past the frame"):
        # Keep the IPv4 header checksum right so the named defect is what is caught.
        ip = bytearray(frame[14:34])
        ip[10:12] = b"\0\0"
        struct.pack_into("!H", ip, 10, ~ref_checksum(bytes(ip)) & 0xFFFF)
        frame = frame[:14] + bytes(ip) + frame[34:]
    assert s.receive(frame, 0) is None
    assert s.counters["malformed"] == 1 and s.counters["offers"] == 0


def test_every_truncation_ignored():
    s = DhcpServer(cfg())
    for n in range(len(GOOD)):
        out = s.receive(GOOD[:n], 0)
        assert out is None, n
    assert s.counters["malformed"] == len(GOOD)
    assert s.receive(GOOD, 0) is not None        # whole: answered


def test_options_without_end_tolerated_and_repeats_joined():
    assert dhcp.parse_options(b"\x00\x01\x04abcd") == {1: b"abcd"}
    assert dhcp.parse_options(b"\x0c\x01a\x0c\x01b\xff\x0c\x05") == {12: b"ab"}
    with pytest.raises(dhcp.Malformed):
        dhcp.parse_options(b"\x0c")


def test_config_parse_and_refusals():
    c = DhcpConfig.parse("198.18.4.1/31,198.18.4.0", GUEST_MAC)
    assert c.client == GUEST and c.router == ROUTER
    for bad in ("198.18.4.1/31", "198.18.4.1,198.18.4.0", "198.18.4.1/31,198.18.5.0",
                "198.18.4.1/31,198.18.4.1", "198.18.4.0/24,198.18.4.1", "x/31,198.18.4.0"):
        with pytest.raises(ValueError):
            DhcpConfig.parse(bad, GUEST_MAC)
    with pytest.raises(ValueError):
        DhcpConfig(b"\x01" * 6, GUEST, ROUTER)           # group address
    with pytest.raises(ValueError):
        DhcpConfig(GUEST_MAC, GUEST, ROUTER, lease_s=0)


# ---- fuzz: nothing escapes, every reply is well-formed ----------------------------------

def check_no_escape(frame: bytes) -> None:
    s = DhcpServer(cfg())
    out = s.receive(frame, 0.0)
    handled = sum(s.counters[k] for k in ("offers", "acks", "naks", "releases", "declines",
                                          "informs", "malformed", "ignored"))
    assert s.counters["received"] == 1 and handled == 1
    if out is not None:
        Reply(out)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700))
def test_fuzz_random_bytes(data):
    check_no_escape(data)


VALID = [client_frame(DISCOVER), client_frame(REQUEST, options=ip_opt(50, GUEST.ip)),
         client_frame(INFORM, ciaddr=str(GUEST.ip)),
         client_frame(RELEASE, ciaddr=str(GUEST.ip))]


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)),
                                        max_size=6), st.integers(0, 700),
       st.binary(max_size=40))
def test_fuzz_mutated_valid_frames(frame, flips, cut, tail):
    b = bytearray(frame)
    for off, v in flips:
        if off < len(b):
            b[off] = v
    check_no_escape(bytes(b[:cut]) + tail)
    check_no_escape(bytes(b) + tail)
