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


# --- Whole-frame builders (added for the offload unit tests; additive) ---------

from dataclasses import dataclass  # noqa: E402

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_DSTOPTS = 60
TCP_CHECK_OFF = 16
UDP_CHECK_OFF = 6
# virtio_net_hdr values, repeated here so this module stays free of vmdnet imports.
F_NEEDS_CSUM = 1
GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 1, 3, 4, 5, 0x80


@dataclass(frozen=True)
class Built:
    """A frame made by `l4_frame`, with where its headers are."""

    frame: bytes
    version: int        # 4 or 6
    proto: int          # IPPROTO_TCP or IPPROTO_UDP
    l3_off: int
    l4_off: int
    l4_hlen: int
    ip_end: int         # end of the IP packet (Ethernet padding follows)

    @property
    def payload_off(self) -> int:
        return self.l4_off + self.l4_hlen

    @property
    def payload(self) -> bytes:
        return self.frame[self.payload_off:self.ip_end]

    @property
    def check_off(self) -> int:
        return self.l4_off + (TCP_CHECK_OFF if self.proto == IPPROTO_TCP else UDP_CHECK_OFF)

    def hdr_fields(self, gso_type: int = 0, gso_size: int = 0, needs_csum: bool = True,
                   hdr_len: int | None = None) -> dict[str, int]:
        """virtio_net_hdr fields a guest driver would write for this frame."""
        return {
            "flags": F_NEEDS_CSUM if needs_csum else 0,
            "gso_type": gso_type,
            "hdr_len": self.payload_off if hdr_len is None else hdr_len,
            "gso_size": gso_size,
            "csum_start": self.l4_off if needs_csum else 0,
            "csum_offset": (self.check_off - self.l4_off) if needs_csum else 0,
        }


def ext_chain(kinds: tuple[tuple[int, int], ...], final_nh: int) -> tuple[bytes, int]:
    """IPv6 extension headers: `kinds` is ((type, length8), ...) with type
    IPPROTO_HOPOPTS/DSTOPTS (any length8) or IPPROTO_ROUTING (length8 ignored).
    Returns (bytes, next-header value for the IPv6 header)."""
    out = b""
    for i in range(len(kinds) - 1, -1, -1):
        kind, length8 = kinds[i]
        nh = final_nh if i == len(kinds) - 1 else kinds[i + 1][0]
        out = (routing_hdr(nh) if kind == IPPROTO_ROUTING else options_hdr(nh, length8)) + out
    return out, (kinds[0][0] if kinds else final_nh)


def options_hdr(nexthdr: int, length8: int) -> bytes:
    """Like `ext_hdr` for any length8 (0..255): the body is a run of PadN options."""
    body_len = (length8 + 1) * 8 - 2
    body = b""
    while body_len:
        n = min(body_len, 257)          # PadN carries at most 255 data bytes
        if body_len - n == 1:           # never leave a lone byte: split earlier
            n -= 2
        body += bytes([1, n - 2]) + b"\0" * (n - 2)
        body_len -= n
    return bytes([nexthdr, length8]) + body


def l4_frame(version: int, proto: int, payload: bytes, *, vlans: tuple[int, ...] = (),
             ip_options: bytes = b"", v6_ext: tuple[tuple[int, int], ...] = (),
             tcp_options: bytes = b"", seq: int = 1000, flags: int = 0x18,
             ident: int = 0x1234, df: bool = True, udp_len: int | None = None,
             check: str = "seed", pad: bytes = b"") -> Built:
    """A TCP or UDP frame over IPv4/IPv6.

    `check` says what goes in the L4 check field: "seed" (what a guest with
    NEEDS_CSUM writes: the folded, non-inverted pseudo-header sum over the full
    L4 length), "full" (the correct checksum), "zero".  `pad` is appended after
    the IP packet (Ethernet padding).
    """
    if proto == IPPROTO_TCP:
        l4 = tcp(seq=seq, flags=flags, options=tcp_options)
    else:
        l4 = udp(length=len(payload) + 8 if udp_len is None else udp_len)
    l4len = len(l4) + len(payload)
    if version == 4:
        l3 = ipv4(proto, l4len, ident=ident, df=df, options=ip_options)
        src, dst = l3[12:16], l3[16:20]
        ethertype = 0x0800
    else:
        ext, nh = ext_chain(v6_ext, proto)
        l3 = ipv6(nh, len(ext) + l4len) + ext
        src, dst = l3[8:24], l3[24:40]
        ethertype = 0x86DD
    l2 = eth(ethertype=ethertype, vlans=vlans)
    seed = pseudo_sum(version, src, dst, proto, l4len)
    coff = TCP_CHECK_OFF if proto == IPPROTO_TCP else UDP_CHECK_OFF
    if check == "seed":
        value = seed
    elif check == "full":
        value = ~ref_checksum(l4 + payload, seed) & 0xFFFF
        if proto == IPPROTO_UDP and value == 0:
            value = 0xFFFF
    else:
        value = 0
    l4 = l4[:coff] + struct.pack("!H", value) + l4[coff + 2:]
    frame = l2 + l3 + l4 + payload
    return Built(frame + pad, version, proto, len(l2), len(l2) + len(l3), len(l4), len(frame))


def ref_l4_ok(frame: bytes, version: int, l3_off: int, l4_off: int, proto: int) -> bool:
    """Reference check of an unfragmented TCP/UDP frame whose offsets are known:
    the IPv4 header sum and the L4 checksum over the IP-stated length."""
    if version == 4:
        ihl = (frame[l3_off] & 0x0F) * 4
        if ref_checksum(frame[l3_off:l3_off + ihl]) != 0xFFFF:
            return False
        end = l3_off + struct.unpack_from("!H", frame, l3_off + 2)[0]
        src, dst = frame[l3_off + 12:l3_off + 16], frame[l3_off + 16:l3_off + 20]
    else:
        end = l3_off + 40 + struct.unpack_from("!H", frame, l3_off + 4)[0]
        src, dst = frame[l3_off + 8:l3_off + 24], frame[l3_off + 24:l3_off + 40]
    seg = frame[l4_off:end]
    if proto == IPPROTO_UDP:
        if struct.unpack_from("!H", seg, 6)[0] == 0:
            return version == 4
        seg = seg[:struct.unpack_from("!H", seg, 4)[0]]
    return ref_checksum(seg, pseudo_sum(version, src, dst, proto, len(seg))) == 0xFFFF


def reassemble_ipv4(frags: list[bytes], l3_off: int) -> bytes:
    """IPv4 fragments (whole frames) → the reassembled IP payload.
    Raises AssertionError on holes, overlaps or a missing last fragment."""
    pieces = {}
    last_end = None
    for f in frags:
        ihl = (f[l3_off] & 0x0F) * 4
        tot, fo = struct.unpack_from("!H2xH", f, l3_off + 2)
        data = f[l3_off + ihl:l3_off + tot]
        off = (fo & 0x1FFF) * 8
        pieces[off] = data
        if not fo & 0x2000:
            last_end = off + len(data)
    return _join(pieces, last_end)


def reassemble_ipv6(frags: list[bytes], l3_off: int, frag_hdr_off: int) -> tuple[bytes, int, int]:
    """IPv6 fragments with the fragment header at `frag_hdr_off` (no headers
    between it and the data) → (payload, next header, identification)."""
    pieces, last_end, ids, nhs = {}, None, set(), set()
    for f in frags:
        nh, fo, ident = struct.unpack_from("!BxHI", f, frag_hdr_off)
        end = l3_off + 40 + struct.unpack_from("!H", f, l3_off + 4)[0]
        data = f[frag_hdr_off + 8:end]
        off = fo & 0xFFF8
        pieces[off] = data
        ids.add(ident)
        nhs.add(nh)
        if not fo & 1:
            last_end = off + len(data)
    assert len(ids) == 1 and len(nhs) == 1, (ids, nhs)
    return _join(pieces, last_end), nhs.pop(), ids.pop()


def _join(pieces: dict[int, bytes], last_end: int | None) -> bytes:
    assert last_end is not None, "no last fragment"
    out, pos = b"", 0
    for off in sorted(pieces):
        assert off == pos, f"hole or overlap at {pos} (next fragment at {off})"
        out += pieces[off]
        pos += len(pieces[off])
    assert pos == last_end, (pos, last_end)
    return out
