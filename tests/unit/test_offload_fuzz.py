"""Fuzzing the offload engine with hostile virtio_net_hdr/frame pairs.

The guest controls every header field and every frame byte.  Whatever it
sends, `validate`, `complete_checksum`, `segment`, `verify` and the batch
call must only ever raise BadHeader, agree with each other about what is
valid, and never emit more than the input plus one rewritten header per
extra segment.  Headers are random but biased to edge values; frames are
random bytes, or valid frames with a few mutated, cut or added bytes.
Memory safety of the same paths is fuzzed under ASan by csrc/tests/test_offload.c.
"""

from __future__ import annotations

import random

import pktlib as P
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vmdnet._native import ffi, lib
from vmdnet.offload import (
    BadHeader,
    Reason,
    VnetHdr,
    complete_checksum,
    segment,
    validate,
    verify,
)


def fuzz(examples: int) -> settings:
    """Fuzz settings: no per-example deadline (2 shared cores), `examples` runs."""
    return settings(deadline=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


IPV6_FRAG_HLEN = 8
EDGE16 = [0, 1, 2, 6, 7, 8, 9, 13, 14, 15, 16, 18, 19, 20, 21, 22, 34, 38, 40, 42, 54, 58,
          62, 66, 74, 1448, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]
EDGE_GSO = [0, 1, 2, 3, 4, 5, 6, 0x11, 0x21, 0x80, 0x81, 0x83, 0x84, 0x85, 0xFF]

u8 = st.integers(0, 0xFF)
edge16 = st.one_of(st.sampled_from(EDGE16), st.integers(0, 0xFFFF))
headers = st.builds(
    VnetHdr,
    flags=st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 0xFF]), u8),
    gso_type=st.one_of(st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84]), st.sampled_from(EDGE_GSO),
                       u8),
    hdr_len=edge16, gso_size=edge16, csum_start=edge16, csum_offset=edge16,
    num_buffers=edge16,
)
FIELDS = ["flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset"]


def parse(frame: bytes) -> tuple[int, int, int]:
    """(ip_version, l4_off, l4_hlen) from the C parser (only to size the bound)."""
    pkt = ffi.new("struct vn_pkt *")
    buf = ffi.from_buffer(frame)
    lib.vn_parse(buf, len(buf), pkt)
    return pkt.ip_version, pkt.l4_off, pkt.l4_hlen


def check_sizes(hdr: VnetHdr, frame: bytes, segs: list[bytes]) -> None:
    """Exact output size: the input plus one copy of the replicated header per
    extra segment (plus an IPv6 fragment header per UFO fragment)."""
    if len(segs) == 1:
        assert len(segs[0]) == len(frame)
        return
    version, l4_off, l4_hlen = parse(frame)
    base = hdr.gso_type & 0x7F
    extra = 0
    if base == P.GSO_UDP:
        head = l4_off
        if version == 6:
            extra = IPV6_FRAG_HLEN
    else:
        head = l4_off + l4_hlen
    total = sum(len(s) for s in segs)
    assert total == len(frame) + (len(segs) - 1) * head + len(segs) * extra
    assert max(len(s) for s in segs) <= head + extra + (hdr.gso_size & 0xFFFF)


def exercise(hdr: VnetHdr, frame: bytes, frag_id: int = 0) -> None:
    """Every entry point on one pair; only BadHeader may escape, consistently."""
    try:
        validate(hdr, frame)
        reason = None
    except BadHeader as exc:
        reason = exc.reason
    try:
        done = complete_checksum(hdr, frame)
        assert reason is None
        assert len(done) == len(frame)
    except BadHeader as exc:
        assert exc.reason is reason
        done = None
    event(f"validate: {reason.name if reason else 'ok'}")
    try:
        segs = segment(hdr, frame, v6_frag_id=frag_id)
    except BadHeader as exc:
        # segment() sizes its arena for ordinary headers; huge IPv6 extension
        # chains with a tiny gso_size may not fit: then NO_SPACE, nothing else.
        assert exc.reason is reason or (reason is None and exc.reason is Reason.NO_SPACE)
    else:
        assert reason is None and segs
        event("segmented" if len(segs) > 1 else "one packet")
        check_sizes(hdr, frame, segs)
        if len(segs) == 1:
            assert segs[0] == done
        for s in segs:
            verify(s)
    verify(frame)


# --- random bytes ------------------------------------------------------------------

@fuzz(300)
@given(hdr=headers, frame=st.one_of(st.binary(max_size=13), st.binary(min_size=14, max_size=300)))
def test_random_bytes(hdr: VnetHdr, frame: bytes) -> None:
    exercise(hdr, frame)


PREFIXES = [P.eth(ethertype=0x0800) + b"\x45", P.eth(ethertype=0x86DD) + b"\x60",
            P.eth(ethertype=0x8100, vlans=(1,))[:12] + b"\x81\x00\x00\x01\x86\xdd\x60",
            P.eth(vlans=(1, 2)) + b"\x46"]


@fuzz(300)
@given(hdr=headers, prefix=st.sampled_from(PREFIXES), rest=st.binary(max_size=400))
def test_random_bytes_behind_ip_start(hdr: VnetHdr, prefix: bytes, rest: bytes) -> None:
    exercise(hdr, prefix + rest)


# --- almost-valid frames ---------------------------------------------------------------

@st.composite
def almost_valid(draw: st.DrawFn, max_payload: int = 3000) -> tuple[VnetHdr, bytes, int]:
    version = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from([P.IPPROTO_TCP, P.IPPROTO_UDP]))
    opts = st.sampled_from([b"", b"\x01" * 4, b"\x01" * 40])
    tcp_options = draw(opts) if proto == P.IPPROTO_TCP else b""
    ip_options = draw(opts) if version == 4 else b""
    v6_ext = () if version == 4 else draw(st.sampled_from([
        (), ((P.IPPROTO_HOPOPTS, 0),), ((P.IPPROTO_ROUTING, 0), (P.IPPROTO_DSTOPTS, 2)),
        ((P.IPPROTO_HOPOPTS, 255), (P.IPPROTO_DSTOPTS, 0))]))
    # The most payload the IP length field allows with these headers.
    ext_len = sum(8 if t == P.IPPROTO_ROUTING else (n8 + 1) * 8 for t, n8 in v6_ext)
    l3_len = 20 + len(ip_options) if version == 4 else ext_len
    l4_len = 20 + len(tcp_options) if proto == P.IPPROTO_TCP else 8
    limit = 0xFFFF - l3_len - l4_len
    sizes = [st.integers(0, max_payload), st.integers(max_payload // 2, max_payload)]
    if max_payload >= limit:
        sizes.append(st.just(limit))            # the largest frame these headers allow
    n = min(limit, draw(st.one_of(sizes)))
    kw: dict[str, object] = {
        "vlans": draw(st.sampled_from([(), (3,), (3, 4)])), "tcp_options": tcp_options,
        "ip_options": ip_options, "v6_ext": v6_ext, "flags": draw(u8),
        "check": draw(st.sampled_from(["seed", "full", "zero"])),
    }
    payload = random.Random(draw(st.integers(0, 2**32))).randbytes(n)   # cheap for 64 KiB
    b = P.l4_frame(version, proto, payload, **kw)
    tso = P.GSO_TCPV4 if version == 4 else P.GSO_TCPV6
    gso = {P.IPPROTO_TCP: [0, tso, tso, tso | P.GSO_ECN, P.GSO_TCPV4 + P.GSO_TCPV6 - tso],
           P.IPPROTO_UDP: [0, P.GSO_UDP, P.GSO_UDP_L4, P.GSO_UDP_L4]}[proto]
    mss = draw(st.one_of(st.integers(1, 2000), st.integers(1, n // 2 + 1)))
    fields = b.hdr_fields(draw(st.sampled_from(gso)), mss)
    for _ in range(draw(st.integers(0, 2))):           # a few header fields off
        name = draw(st.sampled_from(FIELDS))
        delta = draw(st.one_of(st.integers(-4, 4), st.sampled_from(EDGE16)))
        fields[name] = (fields[name] + delta) & (0xFF if name in ("flags", "gso_type")
                                                 else 0xFFFF)
    frame = bytearray(b.frame)
    for _ in range(draw(st.integers(0, 4))):           # a few bytes flipped
        if frame:
            pos = draw(st.integers(0, min(len(frame) - 1, b.payload_off + 8)))
            frame[pos] ^= draw(st.integers(1, 0xFF))
    cut = draw(st.one_of(st.just(0), st.integers(0, len(frame))))
    if cut:
        frame = frame[:len(frame) - cut]
    frame += draw(st.one_of(st.just(b""), st.binary(max_size=64)))
    return VnetHdr(**fields), bytes(frame), draw(st.integers(0, 0xFFFFFFFF))


@fuzz(500)
@given(case=almost_valid())
def test_almost_valid(case: tuple[VnetHdr, bytes, int]) -> None:
    exercise(*case)


@fuzz(25)
@given(case=almost_valid(max_payload=0xFFFF))
def test_almost_valid_large(case: tuple[VnetHdr, bytes, int]) -> None:
    exercise(*case)


# --- the batch call on the same inputs -------------------------------------------------

def c_batch(items: list[tuple[VnetHdr, bytes, int]], frag_id: int) -> list[object]:
    """vn_fix_batch straight from C with a known first fragment ID."""
    n = len(items)
    ents = ffi.new("struct vn_batch_ent[]", n)
    keep = []
    for i, (h, f, _) in enumerate(items):
        buf = ffi.from_buffer(f)
        keep.append(buf)
        for name in FIELDS:
            setattr(ents[i].hdr, name, getattr(h, name))
        ents[i].frame = buf
        ents[i].len = len(f)
    cap = sum(len(f) for _, f, _ in items) * 8 + (1 << 16)
    max_segs = 1 << 16
    arena = ffi.new("uint8_t[]", cap)
    lens = ffi.new("uint32_t[]", max_segs)
    total = lib.vn_fix_batch(ents, n, frag_id, arena, cap, lens, max_segs)
    raw, pos, out = ffi.buffer(arena, cap), 0, []
    for i in range(n):
        e = ents[i]
        if e.result < 0:
            out.append(Reason(-e.result))
            continue
        assert e.first_seg + e.result <= total
        segs = []
        for k in range(e.first_seg, e.first_seg + e.result):
            segs.append(raw[pos:pos + lens[k]])
            pos += lens[k]
        out.append(segs)
    return out


@fuzz(60)
@given(items=st.lists(almost_valid(max_payload=2000), min_size=1, max_size=6),
       frag_id=st.integers(0, 0xFFFFFFFF))
def test_batch_equals_per_frame(items: list[tuple[VnetHdr, bytes, int]], frag_id: int) -> None:
    got = c_batch(items, frag_id)
    for i, (h, f, _) in enumerate(items):
        try:
            want: object = segment(h, f, v6_frag_id=(frag_id + i) & 0xFFFFFFFF)
        except BadHeader as exc:
            want = exc.reason
        if want is Reason.NO_SPACE or got[i] is Reason.NO_SPACE:
            continue            # different arena sizes; both are allowed to run out
        assert got[i] == want, f"frame {i} of {len(items)}"
