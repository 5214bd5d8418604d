"""Oracle cases: frames a guest could write, with the virtio_net_hdr it would use.

A `Spec` says what to build (offload kind, IP version, VLAN tags, IP options or
IPv6 extension headers, TCP options and flags, sequence number, IP ID, payload
and gso_size); `build()` turns it into (VnetHdr, frame) with the L4 check
field seeded the way a guest driver seeds it for NEEDS_CSUM: the folded,
non-inverted pseudo-header sum over the full L4 length.  Frames use only the
primitives of tests/pktlib.py (plain Python, independent of the C engine).

`edge_specs()` lists the hand-picked edge cases, `random_specs()` a seeded,
reproducible random set.  A spec may ask for a segment whose computed
checksum is zero (`zero_seg`): `craft_zero()` adjusts one payload word so it
is; which word is worked out from a first run of our engine, and whether the
checksum really comes out zero is then for the kernel to show.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, replace

import pktlib as P

from vmdnet.offload import (
    MAX_FRAME,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    BadHeader,
    VnetHdr,
    segment,
)

IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS = 0, 43, 44, 60
TCP_CHECK_OFF, UDP_CHECK_OFF = 16, 6
ETH_HLEN = 14
# Offload kinds: TSO, USO, UFO, NEEDS_CSUM without GSO, and neither.
KINDS = ("tcp", "uso", "ufo", "csum_tcp", "csum_udp", "plain")
# hdr_len as a guest may set it: the exact L2-L4 header length, 0 (unknown),
# just the Ethernet header, the end of the checksum field (the kernel raises
# hdr_len to it), past the headers into the payload, the whole frame.
HDR_LEN_MODES = ("exact", "zero", "eth", "csum_end", "plus", "all")
# Largest IP packet (total length / payload length are 16-bit) and, as the
# taps' MTU is 65521, the largest non-GSO L3 packet the bridge forwards.
IP_MAX = 65535
NON_GSO_L3_MAX = 65535 - ETH_HLEN
# The kernel refuses USO writes of more segments (UDP_MAX_SEGMENTS).
USO_MAX_SEGS = 128
# TCP options: MSS+SACK-permitted+timestamps-like 20 bytes, and a 12-byte
# NOP,NOP,timestamp block (what Linux sends on an established connection).
TCP_OPT_TS = bytes([1, 1, 8, 10]) + struct.pack("!II", 0x01020304, 0x05060708)
TCP_OPT_LONG = bytes([2, 4, 0x05, 0xB4, 4, 2, 8, 10]) + struct.pack("!II", 7, 9) + bytes(
    [1, 1, 1, 0])
# IPv4 options: four NOPs; router alert; a 36-byte record-route (IHL 14).
IP_OPT_NOP = bytes([1, 1, 1, 1])
IP_OPT_RA = bytes([0x94, 4, 0, 0])
IP_OPT_RR = bytes([7, 35, 4]) + bytes(32) + bytes([0])
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
# IPv6 extension header chains (order as a sender emits them).
V6_EXT_CHAINS = (
    (),
    (IPPROTO_HOPOPTS,),
    (IPPROTO_DSTOPTS,),
    (IPPROTO_ROUTING,),
    (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS),
    (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING),
    (IPPROTO_DSTOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS),
)


@dataclass(frozen=True)
class Spec:
    """One oracle case, before it is turned into bytes."""

    name: str
    kind: str
    ipv: int = 4
    payload: int = 1000
    gso_size: int = 0
    vlans: tuple[int, ...] = ()
    ip_opts: bytes = b""
    v6_ext: tuple[int, ...] = ()
    v6_ext_len8: int = 0            # extra 8-byte units per hop-by-hop/dest header
    tcp_opts: bytes = b""
    tcp_flags: int = TCP_ACK | TCP_PSH
    urg_ptr: int = 0
    ecn: bool = False               # VIRTIO_NET_HDR_GSO_ECN in gso_type
    tos: int = 0                    # IPv4 TOS / IPv6 traffic class (ECN bits)
    seq: int = 1000
    ident: int = 0x1234
    df: bool = True
    pad: int = 0                    # Ethernet padding after the IP packet
    zero_seg: int | None = None     # make this segment's checksum come out zero
    hdr_len: str = "exact"          # one of HDR_LEN_MODES
    hdr_flags: int = 0              # extra virtio_net_hdr flags (DATA_VALID, RSC_INFO)
    ip_check: int | None = None     # IPv4 header checksum as written (None: correct)
    seed: int = 0

    @property
    def proto(self) -> int:
        return IPPROTO_TCP if self.kind in ("tcp", "csum_tcp") else (
            IPPROTO_UDP if self.kind != "plain" else IPPROTO_TCP)


@dataclass
class Case:
    spec: Spec
    hdr: VnetHdr
    frame: bytes
    l4_off: int
    zeroed: bool = False            # craft_zero() made a checksum sum to zero


def _payload(spec: Spec) -> bytes:
    return random.Random(spec.seed * 7919 + spec.payload).randbytes(spec.payload)


def _v6_ext(chain: tuple[int, ...], final_nh: int, len8: int) -> tuple[bytes, int]:
    out = b""
    for i in range(len(chain) - 1, -1, -1):
        nh = final_nh if i == len(chain) - 1 else chain[i + 1]
        if chain[i] == IPPROTO_ROUTING:
            out = P.routing_hdr(nh) + out
        else:
            out = P.ext_hdr(nh, len8) + out
    return out, (chain[0] if chain else final_nh)


def _gso_type(spec: Spec) -> int:
    if spec.kind == "tcp":
        base = VIRTIO_NET_HDR_GSO_TCPV4 if spec.ipv == 4 else VIRTIO_NET_HDR_GSO_TCPV6
        return base | (VIRTIO_NET_HDR_GSO_ECN if spec.ecn else 0)
    if spec.kind == "uso":
        return VIRTIO_NET_HDR_GSO_UDP_L4
    if spec.kind == "ufo":
        return VIRTIO_NET_HDR_GSO_UDP
    return VIRTIO_NET_HDR_GSO_NONE


def build(spec: Spec, src_mac: bytes = P.MAC_A) -> Case:
    """The frame and header a guest would write for `spec`."""
    pay = _payload(spec)
    proto = spec.proto
    if proto == IPPROTO_TCP:
        l4 = P.tcp(seq=spec.seq, flags=spec.tcp_flags, options=spec.tcp_opts,
                   urg=spec.urg_ptr)
    else:
        l4 = P.udp(length=8 + len(pay))
    l4len = len(l4) + len(pay)
    if spec.ipv == 4:
        l3 = P.ipv4(proto, l4len, ident=spec.ident, df=spec.df, tos=spec.tos,
                    options=spec.ip_opts)
        if spec.ip_check is not None:
            l3 = l3[:10] + struct.pack("!H", spec.ip_check) + l3[12:]
        src, dst = l3[12:16], l3[16:20]
        ethertype = 0x0800
    else:
        ext, nh = _v6_ext(spec.v6_ext, proto, spec.v6_ext_len8)
        l3 = P.ipv6(nh, len(ext) + l4len, tc=spec.tos) + ext
        src, dst = l3[8:24], l3[24:40]
        ethertype = 0x86DD
    l2 = P.eth(src=src_mac, ethertype=ethertype, vlans=spec.vlans)
    l4_off = len(l2) + len(l3)
    coff = TCP_CHECK_OFF if proto == IPPROTO_TCP else UDP_CHECK_OFF
    frame_len = l4_off + l4len + spec.pad
    if spec.kind != "plain":
        seed = P.pseudo_sum(spec.ipv, src, dst, proto, l4len)
        l4 = l4[:coff] + struct.pack("!H", seed) + l4[coff + 2:]
        hdr = VnetHdr(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM | spec.hdr_flags,
                      gso_type=_gso_type(spec), gso_size=spec.gso_size,
                      hdr_len=_hdr_len(spec.hdr_len, l4_off + len(l4), l4_off + coff + 2,
                                       frame_len),
                      csum_start=l4_off, csum_offset=coff)
    else:
        hdr = VnetHdr(flags=spec.hdr_flags,
                      hdr_len=_hdr_len(spec.hdr_len, 0, ETH_HLEN, frame_len))
    frame = l2 + l3 + l4 + pay + bytes(spec.pad)
    case = Case(spec, hdr, frame, l4_off)
    if spec.zero_seg is not None:
        case = craft_zero(case)
    return case


def _hdr_len(mode: str, exact: int, csum_end: int, frame_len: int) -> int:
    value = {"exact": exact, "zero": 0, "eth": ETH_HLEN, "csum_end": csum_end,
             "plus": exact + 100, "all": frame_len}[mode]
    return min(value, frame_len, 0xFFFF)


def _ones_add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def craft_zero(case: Case) -> Case:
    """Adjust one payload word so segment `zero_seg`'s checksum sums to zero.

    A field c = ~fold(S); adding c to one 16-bit word (at an even offset from
    where that segment's checksum starts) makes the sum 0xffff, i.e. a
    computed checksum of zero.  The segment's current c is read from our
    engine's output; the kernel then shows how it stores that zero.
    """
    spec, hdr = case.spec, case.hdr
    try:
        segs = segment(hdr, case.frame, v6_frag_id=0)
    except BadHeader:
        return case
    k = min(spec.zero_seg or 0, len(segs) - 1)
    # Only real IPv6 UFO fragments carry the 8-byte fragment header.
    out_l4 = case.l4_off + (8 if spec.kind == "ufo" and spec.ipv == 6 and len(segs) > 1 else 0)
    coff = TCP_CHECK_OFF if spec.proto == IPPROTO_TCP else UDP_CHECK_OFF
    if spec.kind == "ufo":
        k = 0
    c = struct.unpack_from("!H", segs[k], out_l4 + coff)[0]
    if c in (0, 0xFFFF):
        return case
    head_end = case.l4_off + _l4_hlen(spec)
    if spec.kind in ("tcp", "uso") and len(segs) > 1:
        if hdr.gso_size < 2:
            return case         # a word would straddle two segments
        # Segment payloads start at an even offset from their L4 header.
        pos = head_end + k * hdr.gso_size
    else:
        pos = head_end          # right after the L4 header: an even offset
    if pos + 2 > len(case.frame) - case.spec.pad:
        return case
    f = bytearray(case.frame)
    w = struct.unpack_from("!H", f, pos)[0]
    struct.pack_into("!H", f, pos, _ones_add(w, c))
    return Case(spec, hdr, bytes(f), case.l4_off, zeroed=True)


def _l4_hlen(spec: Spec) -> int:
    return 20 + len(spec.tcp_opts) if spec.proto == IPPROTO_TCP else 8


def edge_specs() -> list[Spec]:
    """Hand-picked edge cases: each names what it covers."""
    s: list[Spec] = []
    mss = 1448
    for ipv in (4, 6):
        for d in (-1, 0, 1):
            s.append(Spec(f"tso{ipv}_3mss{d:+d}", "tcp", ipv, 3 * mss + d, mss))
            s.append(Spec(f"uso{ipv}_3mss{d:+d}", "uso", ipv, 3 * mss + d, mss))
        s.append(Spec(f"tso{ipv}_single", "tcp", ipv, 500, mss))
        s.append(Spec(f"tso{ipv}_exactly_one_mss", "tcp", ipv, mss, mss))
        s.append(Spec(f"uso{ipv}_single", "uso", ipv, 500, mss))
        s.append(Spec(f"tso{ipv}_gso1_128seg", "tcp", ipv, 128, 1))
        s.append(Spec(f"tso{ipv}_gso8", "tcp", ipv, 1000, 8))
        s.append(Spec(f"uso{ipv}_gso1_128seg", "uso", ipv, 128, 1))
        s.append(Spec(f"uso{ipv}_128seg", "uso", ipv, 128 * 500, 500))
        s.append(Spec(f"uso{ipv}_128seg_short_last", "uso", ipv, 127 * 500 + 1, 500))
        s.append(Spec(f"tso{ipv}_jumbo9000", "tcp", ipv, 60000, 9000))
        s.append(Spec(f"tso{ipv}_jumbo16000", "tcp", ipv, 64000, 16000))
        s.append(Spec(f"uso{ipv}_jumbo9000", "uso", ipv, 40000, 9000))
        # The largest frames vmdnet takes: the IP length field or VN_MAX_FRAME
        # (_fit_payload clamps the payload to whichever binds first).
        s.append(Spec(f"tso{ipv}_max_frame", "tcp", ipv, IP_MAX, 1448))
        s.append(Spec(f"tso{ipv}_max_frame_qinq", "tcp", ipv, IP_MAX, 1448, vlans=(1, 2)))
        s.append(Spec(f"uso{ipv}_max_frame", "uso", ipv, IP_MAX, 1000))
        s.append(Spec(f"ufo{ipv}_max_frame", "ufo", ipv, IP_MAX, 8000))
        for mode in HDR_LEN_MODES[1:]:
            for kind in ("tcp", "uso", "ufo", "csum_tcp"):
                s.append(Spec(f"{kind}{ipv}_hdr_len_{mode}", kind, ipv, 6000, 1400,
                              hdr_len=mode))
        s.append(Spec(f"tso{ipv}_data_valid_flag", "tcp", ipv, 3000, 1000, hdr_flags=2))
        s.append(Spec(f"csum{ipv}_rsc_info_flag", "csum_tcp", ipv, 300, hdr_flags=4))
        s.append(Spec(f"tso{ipv}_seq_wrap", "tcp", ipv, 5 * 1000, 1000,
                      seq=0xFFFFFFFF - 2500))
        s.append(Spec(f"tso{ipv}_tcp_opts_ts", "tcp", ipv, 4000, 1436, tcp_opts=TCP_OPT_TS))
        s.append(Spec(f"tso{ipv}_tcp_opts_long", "tcp", ipv, 4000, 1000,
                      tcp_opts=TCP_OPT_LONG))
        for fl, nm in ((TCP_ACK | TCP_FIN | TCP_PSH, "fin_psh"),
                       (TCP_ACK | TCP_URG, "urg"),
                       (TCP_ACK | TCP_CWR | TCP_ECE, "cwr_ece"),
                       (TCP_ACK | TCP_CWR | TCP_ECE | TCP_FIN | TCP_PSH | TCP_URG, "all"),
                       (TCP_ACK | TCP_SYN, "syn"), (TCP_ACK | TCP_RST, "rst")):
            s.append(Spec(f"tso{ipv}_flags_{nm}", "tcp", ipv, 3000, 1000, tcp_flags=fl,
                          urg_ptr=500 if fl & TCP_URG else 0))
        s.append(Spec(f"tso{ipv}_ecn_cwr", "tcp", ipv, 3000, 1000,
                      tcp_flags=TCP_ACK | TCP_CWR, ecn=True, tos=2))
        s.append(Spec(f"tso{ipv}_ecn_ce", "tcp", ipv, 3000, 1000, ecn=True, tos=3))
        for vl, nm in (((100,), "vlan"), ((100, 200), "qinq")):
            s.append(Spec(f"tso{ipv}_{nm}", "tcp", ipv, 3000, 1000, vlans=vl))
            s.append(Spec(f"uso{ipv}_{nm}", "uso", ipv, 3000, 1000, vlans=vl))
            s.append(Spec(f"ufo{ipv}_{nm}", "ufo", ipv, 3000, 1000, vlans=vl))
            s.append(Spec(f"csum{ipv}_{nm}", "csum_tcp", ipv, 300, vlans=vl))
        for kind in ("tcp", "uso", "ufo", "csum_tcp", "csum_udp"):
            s.append(Spec(f"{kind}{ipv}_zero_csum", kind, ipv, 3000, 1000, zero_seg=1))
            s.append(Spec(f"{kind}{ipv}_zero_csum_first", kind, ipv, 3001, 1000, zero_seg=0,
                          seed=1))
            s.append(Spec(f"{kind}{ipv}_zero_csum_last", kind, ipv, 2999, 1000, zero_seg=2,
                          seed=2))
        s.append(Spec(f"tso{ipv}_eth_padding", "tcp", ipv, 3000, 1000, pad=6))
        s.append(Spec(f"csum{ipv}_eth_padding", "csum_tcp", ipv, 10, pad=20))
        s.append(Spec(f"csum_udp{ipv}_eth_padding", "csum_udp", ipv, 4, pad=30))
        s.append(Spec(f"plain{ipv}", "plain", ipv, 100))
        s.append(Spec(f"csum_udp{ipv}_empty", "csum_udp", ipv, 0))
        s.append(Spec(f"csum{ipv}_odd_len", "csum_tcp", ipv, 1001))
        s.append(Spec(f"ufo{ipv}_gso1000", "ufo", ipv, 3000, 1000))
        s.append(Spec(f"ufo{ipv}_gso1480", "ufo", ipv, 8000, 1480))
        s.append(Spec(f"ufo{ipv}_gso_not_mult8", "ufo", ipv, 3000, 1001))
        s.append(Spec(f"ufo{ipv}_gso8", "ufo", ipv, 500, 8))
        s.append(Spec(f"ufo{ipv}_single", "ufo", ipv, 500, 1000))
        s.append(Spec(f"ufo{ipv}_udp_hdr_split", "ufo", ipv, 100, 100))
        s.append(Spec(f"ufo{ipv}_jumbo", "ufo", ipv, 60000, 16000))
    for opts, nm in ((IP_OPT_NOP, "nop"), (IP_OPT_RA, "ra"), (IP_OPT_RR, "rr")):
        for kind in ("tcp", "uso", "ufo", "csum_udp"):
            s.append(Spec(f"{kind}4_ipopt_{nm}", kind, 4, 3000, 1000, ip_opts=opts))
    s.append(Spec("tso4_ipid_wrap", "tcp", 4, 5000, 1000, ident=0xFFFE))
    s.append(Spec("uso4_ipid_wrap", "uso", 4, 5000, 1000, ident=0xFFFE))
    s.append(Spec("tso4_no_df", "tcp", 4, 3000, 1000, df=False))
    s.append(Spec("uso4_no_df", "uso", 4, 3000, 1000, df=False))
    s.append(Spec("ufo4_no_df", "ufo", 4, 3000, 1000, df=False))
    s.append(Spec("ufo4_ipid_ffff", "ufo", 4, 3000, 1000, ident=0xFFFF))
    # The kernel recomputes each segment's IPv4 header checksum, even from 0.
    s.append(Spec("tso4_ip_check_zero", "tcp", 4, 3000, 1000, ip_check=0))
    s.append(Spec("uso4_ip_check_bad", "uso", 4, 3000, 1000, ip_check=0x1234))
    s.append(Spec("ufo4_ip_check_zero", "ufo", 4, 3000, 1000, ip_check=0))
    # A single packet keeps its (bad) IPv4 checksum: bridge netfilter, which
    # would drop it, must be off in the oracle's namespace.
    s.append(Spec("csum4_bad_ip_check", "csum_tcp", 4, 300, ip_check=0x1234))
    for chain in V6_EXT_CHAINS[1:]:
        nm = "_".join({0: "hbh", 43: "rt", 60: "dst"}[c] for c in chain)
        for kind in ("tcp", "uso", "ufo", "csum_tcp"):
            s.append(Spec(f"{kind}6_ext_{nm}", kind, 6, 3000, 1000, v6_ext=chain))
        s.append(Spec(f"ufo6_ext_{nm}_long", "ufo", 6, 3000, 1000, v6_ext=chain,
                      v6_ext_len8=3))
    # Long extension headers repeated in many small segments: each segment's
    # header is far above a fixed "largest header" guess (segment() once ran
    # out of arena here).
    for kind, gso in (("tcp", 1), ("uso", 1), ("ufo", 8)):
        s.append(Spec(f"{kind}6_long_ext_gso{gso}", kind, 6, 1000, gso,
                      v6_ext=V6_EXT_CHAINS[4], v6_ext_len8=30))
    return [_fit_payload(x) for x in s]


def random_specs(n: int, seed: int) -> list[Spec]:
    """`n` random cases from `seed` (reproducible: the same seed, the same cases)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        out.append(_random_spec(rnd, f"rnd{seed}_{i}", i))
    return out


def _head_len(spec: Spec) -> int:
    """Bytes of a frame that are not payload: L2, L3 (+ options/extensions), L4, padding."""
    l3 = 20 + len(spec.ip_opts) if spec.ipv == 4 else 40 + sum(
        8 if t == IPPROTO_ROUTING else (spec.v6_ext_len8 + 1) * 8 for t in spec.v6_ext)
    return ETH_HLEN + 4 * len(spec.vlans) + l3 + _l4_hlen(spec) + spec.pad


def _fit_payload(spec: Spec) -> Spec:
    """Clamp the payload to what the IP length fields and VN_MAX_FRAME allow, and
    keep clear of the TCP-options rule (a stricter rule tested on its own)."""
    l3_hdr = _head_len(spec) - ETH_HLEN - 4 * len(spec.vlans) - _l4_hlen(spec) - spec.pad
    ip_room = IP_MAX - _l4_hlen(spec) - (l3_hdr if spec.ipv == 4 else l3_hdr - 40)
    limit = min(ip_room, MAX_FRAME - _head_len(spec))
    if spec.kind.startswith("csum"):
        limit = min(limit, NON_GSO_L3_MAX - _head_len(spec))
    if spec.kind == "uso":    # padding is payload to the kernel's segment count
        limit = min(limit, USO_MAX_SEGS * spec.gso_size - spec.pad)
    payload = min(spec.payload, limit)
    opts, pad = len(spec.tcp_opts), spec.pad      # padding counts as payload
    if spec.kind == "tcp" and payload + pad <= spec.gso_size < payload + pad + opts:
        payload = min(spec.gso_size + 1, limit)
        if payload + pad <= spec.gso_size:
            return replace(spec, payload=payload, tcp_opts=b"")
    return replace(spec, payload=payload)


def _random_spec(rnd: random.Random, name: str, i: int) -> Spec:
    kind = rnd.choice(("tcp", "tcp", "tcp", "uso", "uso", "ufo", "csum_tcp", "csum_udp"))
    ipv = rnd.choice((4, 6))
    vlans = rnd.choice(((), (), (), (rnd.randrange(1, 4095),),
                        (rnd.randrange(1, 4095), rnd.randrange(1, 4095))))
    gso = rnd.choice((1, 8, 100, 536, 1000, 1220, 1448, 1460, rnd.randrange(1, 2000),
                      9000, 16000))
    if kind == "ufo" and gso < 8:
        gso = 8 * rnd.randint(1, 200)
    nsegs = rnd.randint(1, 128 if gso <= 500 else max(1, 60000 // gso))
    payload = max(1, nsegs * gso + rnd.choice((0, 0, -1, 1, -rnd.randrange(gso))))
    flags = TCP_ACK | rnd.choice((0, TCP_PSH, TCP_FIN | TCP_PSH, TCP_CWR, TCP_URG, TCP_ECE,
                                  TCP_CWR | TCP_ECE | TCP_PSH | TCP_FIN))
    spec = Spec(
        name, kind, ipv, payload, gso, vlans=vlans,
        ip_opts=rnd.choice((b"", b"", IP_OPT_NOP, IP_OPT_RA, IP_OPT_RR)) if ipv == 4 else b"",
        v6_ext=rnd.choice(V6_EXT_CHAINS) if ipv == 6 else (),
        v6_ext_len8=rnd.choice((0, 0, 1, 5)),
        tcp_opts=rnd.choice((b"", b"", TCP_OPT_TS, TCP_OPT_LONG)), tcp_flags=flags,
        urg_ptr=rnd.randrange(0x10000) if flags & TCP_URG else 0,
        ecn=kind == "tcp" and rnd.random() < 0.3, tos=rnd.randrange(256),
        seq=rnd.randrange(1 << 32), ident=rnd.randrange(1 << 16), df=rnd.random() < 0.8,
        pad=rnd.choice((0, 0, 0, 0, 1, 7)),
        zero_seg=rnd.randrange(nsegs) if rnd.random() < 0.15 else None,
        hdr_len=rnd.choice(("exact",) * 6 + HDR_LEN_MODES[1:]),
        hdr_flags=rnd.choice((0,) * 8 + (2, 4)),
        ip_check=rnd.choice((None,) * 8 + (0, rnd.randrange(0x10000))) if ipv == 4 else None,
        seed=i)
    return _fit_payload(spec)
