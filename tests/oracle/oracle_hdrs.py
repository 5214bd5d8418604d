"""A small, independent header walker for the oracle tests.

Plain Python, deliberately separate from csrc/vn_pkt.c: it decides whether
one of the documented stricter rules applies to a header/frame pair without
asking the engine under test, and finds the IPv6 fragment header the kernel
inserted (to read its random identification).  Unlike vn_parse it walks any
number of VLAN tags and IPv6 extension headers (up to generous bounds), so the
tests can see when a frame goes beyond what vn_parse accepts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_HLEN = 14
VLAN_TPIDS = (0x8100, 0x88A8)
V6_EXT = (0, 43, 60)              # hop-by-hop, routing, destination options
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_FRAGMENT = 6, 17, 44
# Walk bounds: far above anything a test builds, so a frame is never cut short.
MAX_TAGS = 16
MAX_EXT = 32


@dataclass
class Parsed:
    vlan_tags: int = 0
    l3_off: int = 0
    ip_version: int = 0           # 0: not IP (or truncated)
    ihl_ok: bool = True
    fragment: bool = False
    ext_count: int = 0
    l4_proto: int = -1
    l4_off: int = 0               # 0: no complete TCP/UDP header
    tcp_hlen: int = 0


def parse(frame: bytes) -> Parsed:
    """Walk Ethernet, VLAN tags, IPv4/IPv6 (+ extension headers), TCP/UDP."""
    p = Parsed()
    off = ETH_HLEN
    if len(frame) < ETH_HLEN:
        return p
    etype = struct.unpack_from("!H", frame, 12)[0]
    while etype in VLAN_TPIDS and p.vlan_tags < MAX_TAGS and len(frame) >= off + 4:
        etype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
        p.vlan_tags += 1
    p.l3_off = off
    if etype == 0x0800 and len(frame) >= off + 20 and frame[off] >> 4 == 4:
        _ipv4(frame, p)
    elif etype == 0x86DD and len(frame) >= off + 40 and frame[off] >> 4 == 6:
        _ipv6(frame, p)
    if p.ip_version and not p.fragment and p.l4_off:
        _l4(frame, p)
    return p


def _ipv4(frame: bytes, p: Parsed) -> None:
    ihl = (frame[p.l3_off] & 0x0F) * 4
    p.ip_version = 4
    p.ihl_ok = ihl >= 20 and len(frame) >= p.l3_off + ihl
    p.fragment = struct.unpack_from("!H", frame, p.l3_off + 6)[0] & 0x3FFF != 0
    p.l4_proto = frame[p.l3_off + 9]
    p.l4_off = p.l3_off + ihl if p.ihl_ok else 0


def _ipv6(frame: bytes, p: Parsed) -> None:
    p.ip_version = 6
    nh, off = frame[p.l3_off + 6], p.l3_off + 40
    while nh in V6_EXT and p.ext_count < MAX_EXT:
        if len(frame) < off + 8:
            p.l4_off = 0
            return
        nh, off = frame[off], off + (frame[off + 1] + 1) * 8
        p.ext_count += 1
    p.fragment = nh == IPPROTO_FRAGMENT
    p.l4_proto = nh
    p.l4_off = off if len(frame) >= off else 0


def _l4(frame: bytes, p: Parsed) -> None:
    if p.l4_proto == IPPROTO_TCP and len(frame) >= p.l4_off + 20:
        doff = (frame[p.l4_off + 12] >> 4) * 4
        if doff >= 20 and len(frame) >= p.l4_off + doff:
            p.tcp_hlen = doff
            return
    elif p.l4_proto == IPPROTO_UDP and len(frame) >= p.l4_off + 8:
        return
    p.l4_off = 0


def v6_frag_header(frame: bytes) -> tuple[int, int] | None:
    """(offset, identification) of the IPv6 fragment header in `frame`, if any."""
    p = Parsed()
    off = ETH_HLEN
    etype = struct.unpack_from("!H", frame, 12)[0]
    while etype in VLAN_TPIDS and len(frame) >= off + 4:
        etype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if etype != 0x86DD or len(frame) < off + 40:
        return None
    p.l3_off = off
    nh, off = frame[off + 6], off + 40
    for _ in range(MAX_EXT):
        if nh == IPPROTO_FRAGMENT and len(frame) >= off + 8:
            return off, struct.unpack_from("!I", frame, off + 4)[0]
        if nh not in V6_EXT or len(frame) < off + 8:
            return None
        nh, off = frame[off], off + (frame[off + 1] + 1) * 8
    return None
