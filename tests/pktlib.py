"""Test-side packet builders: plain Python, independent of the C helper.

These build Ethernet frames the way a guest driver hands them to virtio-net:
headers filled in, and for NEEDS_CSUM the L4 check field holding the folded,
non-inverted pseudo-header sum over the full L4 length.  `ref_checksum` is
the tiny independent reference the C checksum is tested against.
"""

from __future__ import annotations

import ipaddress
import struct

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP4_A, IP4_B = "198.18.0.1", "198.18.0.2"
IP6_A, IP6_B = "fd00::1", "fd00::2"


def ref_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 one's complement sum, folded, not inverted (reference)."""
    if len(data) % 2:
        data = data + b"\0"
    s = initial
    for (w,) in struct.iter_unpack("!H", data):
        s += w
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_sum(version: int, src: bytes, dst: bytes, proto: int, l4len: int) -> int:
    if version == 4:
        ph = src + dst + struct.pack("!BBH", 0, proto, l4len)
    else:
        ph = src + dst + struct.pack("!IxxxB", l4len, proto)
    return ref_checksum(ph)


def eth(dst: bytes = MAC_B, src: bytes = MAC_A, ethertype: int = 0x0800,
        vlans: tuple[int, ...] = ()) -> bytes:
    hdr = dst + src
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if (len(vlans) == 2 and i == 0) else 0x8100
        hdr += struct.pack("!HH", tpid, vid & 0xFFF)
    return hdr + struct.pack("!H", ethertype)


def ipv4(proto: int, l4len: int, src: str = IP4_A, dst: str = IP4_B, ident: int = 0x1234,
         df: bool = True, ttl: int = 64, tos: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, tos, ihl * 4 + l4len, ident,
                    0x4000 if df else 0, ttl, proto, 0,
                    ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    h += options
    c = ~ref_checksum(h) & 0xFFFF
    return h[:10] + struct.pack("!H", c) + h[12:]


def ipv6(nexthdr: int, payload_len: int, src: str = IP6_A, dst: str = IP6_B,
         tc: int = 0, flow: int = 0, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", (6 << 28) | (tc << 20) | flow, payload_len, nexthdr, hlim,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)


def ext_hdr(nexthdr: int, length8: int = 0) -> bytes:
    """An IPv6 hop-by-hop/dest-options header of (length8+1)*8 bytes, PadN filled."""
    total = (length8 + 1) * 8
    pad = total - 2
    body = bytes([1, pad - 2]) + b"\0" * (pad - 2)
    return bytes([nexthdr, length8]) + body


def routing_hdr(nexthdr: int) -> bytes:
    """A type-0-free, zero-segments-left routing header (type 4 SRH-like, 8 bytes)."""
    return bytes([nexthdr, 0, 4, 0]) + b"\0" * 4


def tcp(sport: int = 40000, dport: int = 5201, seq: int = 1000, ack: int = 1, flags: int = 0x18,
        window: int = 65535, options: bytes = b"", urg: int = 0) -> bytes:
    doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, doff << 4, flags,
                       window, 0, urg) + options


def udp(sport: int = 40000, dport: int = 5201, length: int = 8) -> bytes:
    return struct.pack("!HHHH", sport, dport, length & 0xFFFF, 0)
