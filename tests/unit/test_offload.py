"""vmdnet.offload: verify, complete_checksum, segment, validate, fix_batch.

Frames come from tests/pktlib.py (pure Python); every checksum an output
carries is checked twice: by the C `verify` and by the Python reference
`pktlib.ref_l4_ok`, so a bug shared by the C summing and the C checking
cannot hide.  What the Linux kernel emits byte for byte is the oracle tests'
job (tests/oracle); these are the properties any correct segmenter has.
"""

from __future__ import annotations

import struct

import pktlib as P
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmdnet.offload import (
    BadHeader,
    FixBatch,
    Reason,
    VnetHdr,
    complete_checksum,
    fix_batch,
    segment,
    validate,
    verify,
)

TCP, UDP = P.IPPROTO_TCP, P.IPPROTO_UDP
GSO_TCP = {4: P.GSO_TCPV4, 6: P.GSO_TCPV6}
TCP_FIN, TCP_PSH, TCP_CWR, TCP_ECE, TCP_ACK = 0x01, 0x08, 0x80, 0x40, 0x10
IPV4_DF, IPV4_MF = 0x4000, 0x2000
# A timestamp option (NOP NOP TS), as Linux sends on every segment.
TS_OPT = bytes([1, 1, 8, 10]) + struct.pack("!II", 0x01020304, 0x05060708)


def hdr_for(b: P.Built, gso_type: int = 0, gso_size: int = 0, needs_csum: bool = True) -> VnetHdr:
    return VnetHdr(**b.hdr_fields(gso_type, gso_size, needs_csum))


def payload_bytes(n: int, salt: int = 0) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


def checks_ok(seg: bytes, b: P.Built) -> bool:
    """Both checkers, with the frame's own offsets (no fragment header)."""
    ref = P.ref_l4_ok(seg, b.version, b.l3_off, b.l4_off, b.proto)
    assert verify(seg) == ref, "C verify and the Python reference disagree"
    return ref


# --- verify -------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("proto", [TCP, UDP])
def test_verify_good_and_corrupted(version: int, proto: int) -> None:
    b = P.l4_frame(version, proto, payload_bytes(301), check="full")
    assert verify(b.frame)
    assert P.ref_l4_ok(b.frame, version, b.l3_off, b.l4_off, proto)
    for pos in (b.l3_off + 12, b.l4_off + 2, b.check_off, b.payload_off, len(b.frame) - 1):
        bad = bytearray(b.frame)
        bad[pos] ^= 0x20
        assert not verify(bytes(bad)), f"flip at {pos} not caught"


def test_verify_bad_ipv4_header_checksum() -> None:
    b = P.l4_frame(4, TCP, b"x" * 40, check="full")
    bad = bytearray(b.frame)
    bad[b.l3_off + 10] ^= 1
    assert not verify(bytes(bad))


@pytest.mark.parametrize("version,expected", [(4, True), (6, False)])
def test_verify_udp_zero_checksum(version: int, expected: bool) -> None:
    # Zero means "no checksum" over IPv4 only; IPv6 requires one (RFC 8200 8.1).
    b = P.l4_frame(version, UDP, b"abc", check="zero")
    assert verify(b.frame) is expected


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("proto", [TCP, UDP])
def test_verify_ignores_ethernet_padding(version: int, proto: int) -> None:
    b = P.l4_frame(version, proto, b"\x01\x02", check="full", pad=b"\xaa" * 17)
    assert len(b.frame) > b.ip_end
    assert verify(b.frame)


def test_verify_udp_length_inside_ip_length() -> None:
    # The UDP length field, not the IP length, bounds the UDP checksum.
    b = P.l4_frame(4, UDP, b"hello", udp_len=8 + 5)
    good = P.l4_frame(4, UDP, b"hello", check="full")
    assert verify(good.frame) and b.frame != good.frame
    too_long = P.l4_frame(4, UDP, b"hello", udp_len=8 + 6, check="full")
    assert not verify(too_long.frame)


@pytest.mark.parametrize("frame", [b"", bytes(13), bytes(60), P.eth(ethertype=0x0806) + bytes(28)])
def test_verify_non_ip(frame: bytes) -> None:
    assert not verify(frame)


def test_verify_truncated_ip_length() -> None:
    b = P.l4_frame(6, TCP, b"z" * 100, check="full")
    assert not verify(b.frame[:-1])


# --- complete_checksum ----------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("proto", [TCP, UDP])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 1400, 9000])
def test_complete_then_verify(version: int, proto: int, n: int) -> None:
    b = P.l4_frame(version, proto, payload_bytes(n, n), check="seed")
    assert not verify(b.frame)          # a guest's seed is not a checksum
    done = complete_checksum(hdr_for(b), b.frame)
    assert len(done) == len(b.frame)
    assert checks_ok(done, b)
    # Only the check field changed.
    assert done[:b.check_off] == b.frame[:b.check_off]
    assert done[b.check_off + 2:] == b.frame[b.check_off + 2:]


@pytest.mark.parametrize("vlans", [(10,), (100, 200)])
def test_complete_with_vlans_and_options(vlans: tuple[int, ...]) -> None:
    b = P.l4_frame(4, TCP, b"q" * 77, vlans=vlans, ip_options=b"\x01\x01\x01\x00",
                   tcp_options=TS_OPT)
    assert checks_ok(complete_checksum(hdr_for(b), b.frame), b)


def test_complete_without_needs_csum_is_identity() -> None:
    b = P.l4_frame(4, UDP, b"abc", check="seed")
    assert complete_checksum(hdr_for(b, needs_csum=False), b.frame) == b.frame


@pytest.mark.parametrize("version", [4, 6])
def test_complete_udp_zero_sent_as_ffff(version: int) -> None:
    # Choose the payload word that makes the UDP sum 0xffff (checksum zero):
    # it must go out as 0xffff, zero meaning "no checksum".
    probe = P.l4_frame(version, UDP, b"\0\0", check="seed")
    word = 0xFFFF - P.ref_checksum(probe.frame[probe.l4_off:])
    b = P.l4_frame(version, UDP, struct.pack("!H", word), check="seed")
    done = complete_checksum(hdr_for(b), b.frame)
    assert done[b.check_off:b.check_off + 2] == b"\xff\xff"
    assert checks_ok(done, b)


def test_complete_refuses_bad_header() -> None:
    b = P.l4_frame(4, TCP, b"x")
    h = hdr_for(b)
    h.csum_offset = len(b.frame)
    with pytest.raises(BadHeader) as info:
        complete_checksum(h, b.frame)
    assert info.value.reason is Reason.CSUM_OFFSET


# --- segment: TCP ---------------------------------------------------------------

def tcp_fields(seg: bytes, b: P.Built) -> tuple[int, int]:
    seq, _, flags = struct.unpack_from("!IIxB", seg, b.l4_off + 4)
    return seq, flags


def check_tcp_segments(b: P.Built, segs: list[bytes], mss: int, seq0: int, flags0: int) -> None:
    pay = b.payload
    assert len(segs) == -(-len(pay) // mss)
    assert b"".join(s[b.payload_off:] for s in segs) == pay
    for i, s in enumerate(segs):
        last = i == len(segs) - 1
        assert len(s) - b.payload_off == (len(pay) - i * mss if last else mss)
        assert checks_ok(s, b), f"segment {i} does not verify"
        seq, flags = tcp_fields(s, b)
        assert seq == (seq0 + i * mss) & 0xFFFFFFFF
        want = flags0
        if not last:
            want &= ~(TCP_FIN | TCP_PSH)
        if i:
            want &= ~TCP_CWR
        assert flags == want, f"segment {i}: flags {flags:#x}, want {want:#x}"
        # Everything but lengths, IDs, seq, flags and checksums is copied.
        assert s[:b.l3_off] == b.frame[:b.l3_off]
        assert s[b.l4_off:b.l4_off + 4] == b.frame[b.l4_off:b.l4_off + 4]
        assert s[b.l4_off + 20:b.payload_off] == b.frame[b.l4_off + 20:b.payload_off]
        if b.version == 4:
            tot, ident, fo = struct.unpack_from("!HHH", s, b.l3_off + 2)
            assert tot == len(s) - b.l3_off
            assert ident == (0x1234 + i) & 0xFFFF
            assert fo == IPV4_DF
        else:
            assert struct.unpack_from("!H", s, b.l3_off + 4)[0] == len(s) - b.l3_off - 40
            assert s[b.l3_off + 8:b.l4_off] == b.frame[b.l3_off + 8:b.l4_off]


@settings(max_examples=100, deadline=None)
@given(version=st.sampled_from([4, 6]), n=st.integers(1, 20000), mss=st.integers(1, 9000),
       seq=st.integers(0, 0xFFFFFFFF), flags=st.integers(0, 0xFF),
       opts=st.sampled_from([b"", TS_OPT]), vlans=st.sampled_from([(), (5,), (7, 9)]))
def test_tcp_segment_properties(version: int, n: int, mss: int, seq: int, flags: int,
                                opts: bytes, vlans: tuple[int, ...]) -> None:
    b = P.l4_frame(version, TCP, payload_bytes(n, seq), seq=seq, flags=flags,
                   tcp_options=opts, vlans=vlans)
    if n > 1:
        mss = min(mss, n - 1)           # make it a real super-packet
    else:
        mss = max(mss, n + len(opts))   # options count in the 20-byte rule (GSO_SIZE)
    segs = segment(hdr_for(b, GSO_TCP[version], mss), b.frame)
    if n <= mss:
        assert len(segs) == 1 and checks_ok(segs[0], b)
        return
    check_tcp_segments(b, segs, mss, seq, flags)


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_64k_flags_fin_psh_cwr(version: int) -> None:
    flags = TCP_FIN | TCP_PSH | TCP_CWR | TCP_ECE | TCP_ACK
    b = P.l4_frame(version, TCP, payload_bytes(65000), flags=flags, seq=0xFFFFF000,
                   tcp_options=TS_OPT)
    segs = segment(hdr_for(b, GSO_TCP[version] | P.GSO_ECN, 1448), b.frame)
    check_tcp_segments(b, segs, 1448, 0xFFFFF000, flags)   # seq wraps too
    assert tcp_fields(segs[0], b)[1] & TCP_CWR
    assert tcp_fields(segs[-1], b)[1] & (TCP_FIN | TCP_PSH) == TCP_FIN | TCP_PSH


def test_tcp_ipv4_id_wraps() -> None:
    b = P.l4_frame(4, TCP, payload_bytes(5000), ident=0xFFFE)
    segs = segment(hdr_for(b, P.GSO_TCPV4, 1000), b.frame)
    ids = [struct.unpack_from("!H", s, b.l3_off + 4)[0] for s in segs]
    assert ids == [0xFFFE, 0xFFFF, 0, 1, 2]
    assert all(checks_ok(s, b) for s in segs)


def test_tcp_ipv6_extension_headers() -> None:
    ext = ((P.IPPROTO_HOPOPTS, 0), (P.IPPROTO_ROUTING, 0), (P.IPPROTO_DSTOPTS, 1))
    b = P.l4_frame(6, TCP, payload_bytes(4000), v6_ext=ext)
    segs = segment(hdr_for(b, P.GSO_TCPV6, 1000), b.frame)
    check_tcp_segments(b, segs, 1000, 1000, 0x18)


def test_tcp_single_when_fits() -> None:
    b = P.l4_frame(4, TCP, payload_bytes(1000))
    segs = segment(hdr_for(b, P.GSO_TCPV4, 1000), b.frame)
    assert len(segs) == 1 and checks_ok(segs[0], b)
    assert segs[0][:b.check_off] == b.frame[:b.check_off]


# --- segment: USO -----------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(version=st.sampled_from([4, 6]), n=st.integers(2, 30000), mss=st.integers(1, 9000),
       vlans=st.sampled_from([(), (5,)]))
def test_uso_segment_properties(version: int, n: int, mss: int, vlans: tuple[int, ...]) -> None:
    mss = max(mss, -(-n // 128), 1)     # at most 128 segments (USO_SEGS)
    b = P.l4_frame(version, UDP, payload_bytes(n, mss), vlans=vlans)
    segs = segment(hdr_for(b, P.GSO_UDP_L4, mss), b.frame)
    assert len(segs) == -(-n // mss)
    assert b"".join(s[b.payload_off:] for s in segs) == b.payload
    for i, s in enumerate(segs):
        n_i = len(s) - b.payload_off
        assert n_i == (mss if i < len(segs) - 1 else n - i * mss)
        assert struct.unpack_from("!H", s, b.l4_off + 4)[0] == 8 + n_i
        assert s[b.check_off:b.check_off + 2] != b"\0\0"
        assert checks_ok(s, b)
        if version == 4:
            assert struct.unpack_from("!H", s, b.l3_off + 4)[0] == (0x1234 + i) & 0xFFFF


# --- segment: UFO -----------------------------------------------------------------

def udp_datagram_ok(version: int, src: bytes, dst: bytes, dgram: bytes) -> bool:
    return P.ref_checksum(dgram, P.pseudo_sum(version, src, dst, UDP, len(dgram))) == 0xFFFF


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 20000), mss8=st.integers(1, 1200), df=st.booleans(),
       ident=st.integers(0, 0xFFFF))
def test_ufo_ipv4_fragments_reassemble(n: int, mss8: int, df: bool, ident: int) -> None:
    mss = 8 * mss8      # fragment offsets count 8-byte units
    b = P.l4_frame(4, UDP, payload_bytes(n, 3), df=df, ident=ident, check="zero")
    frags = segment(hdr_for(b, P.GSO_UDP, mss), b.frame)
    dgram_len = n + 8
    if dgram_len <= mss:
        assert len(frags) == 1
        return
    assert len(frags) == -(-dgram_len // mss)
    for i, f in enumerate(frags):
        assert P.ref_checksum(f[b.l3_off:b.l4_off]) == 0xFFFF     # IP header checksum
        fid, fo = struct.unpack_from("!HH", f, b.l3_off + 4)
        assert fid == ident                                         # one ID for all
        assert fo & IPV4_DF == 0                                     # DF cleared
        assert bool(fo & IPV4_MF) == (i < len(frags) - 1)
        assert (fo & 0x1FFF) * 8 == i * mss
        assert f[:b.l3_off + 2] == b.frame[:b.l3_off + 2]
        assert f[b.l3_off + 8:b.l3_off + 10] == b.frame[b.l3_off + 8:b.l3_off + 10]  # TTL, proto
        assert f[b.l3_off + 12:b.l4_off] == b.frame[b.l3_off + 12:b.l4_off]         # addresses
    dgram = P.reassemble_ipv4(frags, b.l3_off)
    assert dgram[8:] == b.payload and dgram[:6] == b.frame[b.l4_off:b.l4_off + 6]
    ip = b.frame[b.l3_off:]
    assert udp_datagram_ok(4, ip[12:16], ip[16:20], dgram)
    assert dgram[6:8] != b"\0\0"


@pytest.mark.parametrize("fid", [0, 0x12345678, 0xFFFFFFFF])
def test_ufo_ipv6_fragment_header(fid: int) -> None:
    b = P.l4_frame(6, UDP, payload_bytes(5000, 9), check="zero")
    frags = segment(hdr_for(b, P.GSO_UDP, 1448), b.frame, v6_frag_id=fid)
    assert len(frags) == -(-(5000 + 8) // 1448)
    fh = b.l4_off                       # fragment header where the UDP header was
    for f in frags:
        assert f[b.l3_off + 6] == P.IPPROTO_FRAGMENT
        assert f[fh] == UDP and f[fh + 1] == 0
        assert struct.unpack_from("!H", f, b.l3_off + 4)[0] == len(f) - b.l3_off - 40
        assert f[b.l3_off + 8:b.l3_off + 40] == b.frame[b.l3_off + 8:b.l3_off + 40]
    dgram, nh, ident = P.reassemble_ipv6(frags, b.l3_off, fh)
    assert (nh, ident) == (UDP, fid)
    assert dgram[8:] == b.payload
    ip = b.frame[b.l3_off:]
    assert udp_datagram_ok(6, ip[8:24], ip[24:40], dgram)


def test_ufo_ipv6_after_routing_header() -> None:
    # The fragment header goes after hop-by-hop and routing, before the
    # destination options that follow a routing header (the fragmentable part).
    ext = ((P.IPPROTO_HOPOPTS, 0), (P.IPPROTO_ROUTING, 0), (P.IPPROTO_DSTOPTS, 0))
    b = P.l4_frame(6, UDP, payload_bytes(3000), v6_ext=ext)
    frags = segment(hdr_for(b, P.GSO_UDP, 1024), b.frame, v6_frag_id=5)
    ins = b.l3_off + 40 + 8 + 8
    for f in frags:
        assert f[b.l3_off + 40 + 8] == P.IPPROTO_FRAGMENT     # the routing header's next
        assert f[ins] == P.IPPROTO_DSTOPTS
        assert struct.unpack_from("!I", f, ins + 4)[0] == 5
        assert f[ins + 8:ins + 16] == b.frame[ins:ins + 8]   # dest options follow
    # Offsets advance by payload_len - 8, unfragmentable headers included: the
    # kernel's rule (ipv6_gso_segment), mirrored on purpose.
    offs = [struct.unpack_from("!H", f, ins + 2)[0] & 0xFFF8 for f in frags]
    plens = [struct.unpack_from("!H", f, b.l3_off + 4)[0] for f in frags]
    for i in range(1, len(frags)):
        assert offs[i] == offs[i - 1] + plens[i - 1] - 8


# --- validate: one minimal example per Reason ------------------------------------

def _tcp4(n: int = 100, **kw: object) -> P.Built:
    return P.l4_frame(4, TCP, payload_bytes(n), **kw)


def _case(reason: Reason) -> tuple[VnetHdr, bytes]:
    t = _tcp4()
    t6 = P.l4_frame(6, TCP, payload_bytes(100))
    gso = hdr_for(t, P.GSO_TCPV4, 50)
    cases = {
        Reason.FRAME_SHORT: (VnetHdr(), bytes(13)),
        Reason.FRAME_LONG: (VnetHdr(), bytes(65558)),
        Reason.HDR_LEN: (VnetHdr(hdr_len=13), t.frame),
        Reason.GSO_TYPE: (VnetHdr(**{**gso.__dict__, "gso_type": 2}), t.frame),
        Reason.GSO_SIZE: (VnetHdr(**{**gso.__dict__, "gso_size": 0}), t.frame),
        Reason.GSO_NO_CSUM: (VnetHdr(**{**gso.__dict__, "flags": 0}), t.frame),
        Reason.CSUM_START: (VnetHdr(**{**gso.__dict__, "csum_start": t.l4_off + 4}), t.frame),
        Reason.CSUM_OFFSET: (VnetHdr(**{**gso.__dict__, "csum_offset": 6}), t.frame),
        Reason.L3: (hdr_for(t6, P.GSO_TCPV4, 50), t6.frame),
        Reason.L4: (VnetHdr(**{**gso.__dict__, "gso_type": P.GSO_UDP_L4}), t.frame),
    }
    if reason is Reason.USO_SEGS:
        u = P.l4_frame(4, UDP, bytes(129 * 10))
        return hdr_for(u, P.GSO_UDP_L4, 10), u.frame
    return cases[reason]


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.NO_SPACE])
def test_each_reason(reason: Reason) -> None:
    hdr, frame = _case(reason)
    with pytest.raises(BadHeader) as info:
        validate(hdr, frame)
    assert info.value.reason is reason
    assert str(info.value) == reason.name
    with pytest.raises(BadHeader):
        segment(hdr, frame)


def test_reason_no_space() -> None:
    b = _tcp4(3000)
    fb = FixBatch(max_frames=1, arena=1000, max_segs=16)
    fb.set(0, hdr_for(b, P.GSO_TCPV4, 1000), b.frame)
    assert fb.run(1) == 0
    assert fb.ents[0].result == -Reason.NO_SPACE
    fb = FixBatch(max_frames=1, arena=1 << 16, max_segs=2)   # 3 segments, room for 2
    fb.set(0, hdr_for(b, P.GSO_TCPV4, 1000), b.frame)
    assert fb.run(1) == 0 and fb.ents[0].result == -Reason.NO_SPACE


@pytest.mark.parametrize("hdr,frame", [
    (VnetHdr(), bytes(14)),                               # shortest frame, no offload
    (VnetHdr(hdr_len=14), bytes(14)),
    (VnetHdr(), bytes(65557)),                            # longest
])
def test_validate_boundaries_accepted(hdr: VnetHdr, frame: bytes) -> None:
    validate(hdr, frame)


def test_validate_more_refusals() -> None:
    t = _tcp4()
    gso = hdr_for(t, P.GSO_TCPV4, 50)

    def reason(**kw: int) -> Reason:
        with pytest.raises(BadHeader) as info:
            validate(VnetHdr(**{**gso.__dict__, **kw}), t.frame)
        return info.value.reason

    assert reason(gso_size=0xFFFF) is Reason.GSO_SIZE
    assert reason(gso_type=P.GSO_UDP | P.GSO_ECN) is Reason.GSO_TYPE
    assert reason(hdr_len=len(t.frame) + 1) is Reason.HDR_LEN
    assert reason(csum_start=10) is Reason.CSUM_START
    assert reason(csum_start=len(t.frame) + 1) is Reason.CSUM_START
    u = P.l4_frame(4, UDP, bytes(100))
    with pytest.raises(BadHeader) as info:
        validate(hdr_for(u, P.GSO_UDP, 7), u.frame)       # UFO below the UDP header
    assert info.value.reason is Reason.GSO_SIZE
    # TCP payload exceeds gso_size by the 20-byte rule, not once options count.
    o = P.l4_frame(4, TCP, bytes(100), tcp_options=TS_OPT)
    with pytest.raises(BadHeader) as info:
        validate(hdr_for(o, P.GSO_TCPV4, 105), o.frame)
    assert info.value.reason is Reason.GSO_SIZE
    validate(hdr_for(o, P.GSO_TCPV4, 99), o.frame)
    # Exactly 128 USO segments pass.
    u = P.l4_frame(4, UDP, bytes(128 * 10))
    validate(hdr_for(u, P.GSO_UDP_L4, 10), u.frame)


# --- fix_batch ---------------------------------------------------------------------

def batch_items() -> list[tuple[VnetHdr, bytes]]:
    t4 = P.l4_frame(4, TCP, payload_bytes(10000))
    t6 = P.l4_frame(6, TCP, payload_bytes(7000, 1), tcp_options=TS_OPT)
    u4 = P.l4_frame(4, UDP, payload_bytes(4000, 2))
    f4 = P.l4_frame(4, UDP, payload_bytes(3000, 3), check="zero")
    c6 = P.l4_frame(6, UDP, payload_bytes(33, 4))
    plain = P.l4_frame(4, TCP, payload_bytes(10), check="full")
    bad = P.l4_frame(4, UDP, payload_bytes(100))
    return [
        (hdr_for(t4, P.GSO_TCPV4, 1448), t4.frame),
        (hdr_for(u4, P.GSO_UDP_L4, 1000), u4.frame),
        (hdr_for(bad, P.GSO_TCPV4, 10), bad.frame),           # bad: L4 mismatch
        (hdr_for(t6, P.GSO_TCPV6, 1428), t6.frame),
        (hdr_for(f4, P.GSO_UDP, 1480), f4.frame),
        (hdr_for(c6), c6.frame),
        (hdr_for(plain, needs_csum=False), plain.frame),
    ]


def test_fix_batch_matches_segment() -> None:
    items = batch_items()
    out = fix_batch(items)
    assert len(out) == len(items)
    for (h, f), got in zip(items, out, strict=True):
        try:
            want: list[bytes] | BadHeader = segment(h, f)
        except BadHeader as exc:
            want = exc
        if isinstance(want, BadHeader):
            assert isinstance(got, BadHeader) and got.reason is want.reason
        else:
            assert got == want


def test_fix_batch_bad_frame_does_not_disturb_others() -> None:
    items = batch_items()
    good_only = [it for i, it in enumerate(items) if i != 2]
    out, ref = fix_batch(items), fix_batch(good_only)
    assert isinstance(out[2], BadHeader) and out[2].reason is Reason.L4
    assert out[:2] + out[3:] == ref
    # A bad frame first and last too.
    out = fix_batch([items[2]] + good_only + [items[2]])
    assert isinstance(out[0], BadHeader) and isinstance(out[-1], BadHeader)
    assert out[1:-1] == ref


def test_fix_batch_ipv6_ufo_ids_consecutive() -> None:
    f = P.l4_frame(6, UDP, payload_bytes(3000), check="zero")
    item = (hdr_for(f, P.GSO_UDP, 1448), f.frame)
    out = fix_batch([item, item, item])
    ids = [struct.unpack_from("!I", segs[0], f.l4_off + 4)[0] for segs in out]
    assert ids[1] == (ids[0] + 1) & 0xFFFFFFFF and ids[2] == (ids[0] + 2) & 0xFFFFFFFF
    assert out[0] == segment(*item, v6_frag_id=ids[0])


def test_fix_batch_empty_and_run_bounds() -> None:
    assert fix_batch([]) == []
    fb = FixBatch(max_frames=2)
    with pytest.raises(ValueError):
        fb.run(3)
    assert fb.run(0) == 0
