"""Unit tests of the RSC engine (vmdnet.offload.rsc, csrc/vn_rsc.c).

Frames come from tests/oracle/test_rsc_gro_streams.py's builders (plain
Python, checksums from pktlib's reference sum); every time is injected.
What Linux GRO does with the same streams is tested in
tests/oracle/test_rsc_gro.py; here: the header fields of each output mode,
the timer, bypass reasons, finalizing flags, limits, eviction, trusted
input, the API's argument checks and its batch entry point.
"""

from __future__ import annotations

import struct

import pktlib as P
import pytest
from oracle.test_rsc_gro_streams import (
    MSS,
    TCP_ACK,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    TcpFlow,
    parse_tcp,
    ts_option,
)

from vmdnet.offload import Coalescer, VnetHdr, segment, verify
from vmdnet.offload.rsc import (
    DEFAULT_INTERVAL_NS,
    Coalescing,
    Mode,
    OutKind,
    coalescing_for_features,
)
from vmdnet.virtio import features as F

US = 1000            # nanoseconds per microsecond
NEEDS_CSUM, DATA_VALID, RSC_INFO = 1, 2, 4
GSO_TCPV4, GSO_TCPV6 = 1, 4


def run(co: Coalescer, frames: list[bytes], t: int = 0) -> list[tuple[VnetHdr, bytes]]:
    out = []
    for f in frames:
        out += co.push(f, t)
    return out


def stat(co: Coalescer, name: str) -> int:
    return co.stats[f"rsc_{name}"]


def payload(frame: bytes) -> bytes:
    p = parse_tcp(frame)
    assert p is not None
    return p.payload


# --- output modes -------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
def test_gso_unit_is_what_gro_hands_a_tap_reader(version: int) -> None:
    flow = TcpFlow(version=version)
    segs = flow.data(10)
    co = Coalescer(mode="gso")
    assert run(co, segs) == []
    [(hdr, frame)] = co.flush()
    l3, l4 = 14, 14 + (20 if version == 4 else 40)
    assert hdr.flags == NEEDS_CSUM
    assert hdr.gso_type == (GSO_TCPV4 if version == 4 else GSO_TCPV6)
    assert (hdr.gso_size, hdr.csum_start, hdr.csum_offset, hdr.hdr_len) == (MSS, l4, 16, l4 + 20)
    assert payload(frame) == b"".join(payload(s) for s in segs)
    # Headers are the first segment's, apart from the IP length (and IPv4 check).
    def hdrs(f: bytes) -> bytes:
        if version == 4:
            return f[:l3 + 2] + f[l3 + 4:l3 + 10] + f[l3 + 12:l4 + 16]
        return f[:l3 + 4] + f[l3 + 6:l4 + 16]
    assert hdrs(frame) == hdrs(segs[0])
    tcp_len = len(frame) - l4
    if version == 4:
        assert struct.unpack_from("!H", frame, l3 + 2)[0] == len(frame) - l3
        assert P.ref_checksum(frame[l3:l4]) == 0xFFFF
        ph = P.pseudo_sum(4, frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20], 6, tcp_len)
    else:
        assert struct.unpack_from("!H", frame, l3 + 4)[0] == len(frame) - l4
        ph = P.pseudo_sum(6, frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40], 6, tcp_len)
    # The check field: folded, non-inverted pseudo-header sum over the full length.
    assert struct.unpack_from("!H", frame, l4 + 16)[0] == ph
    # And the project's own software GSO turns it back into the segments.
    assert segment(hdr, frame) == segs


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("size", [MSS, 1447, 7])
def test_rsc_unit_has_counts_and_full_checksums(version: int, size: int) -> None:
    flow = TcpFlow(version=version)
    segs = flow.data(7, size=size)
    co = Coalescer(mode="rsc")
    run(co, segs)
    [(hdr, frame)] = co.flush()
    p = parse_tcp(frame)
    assert hdr.flags == RSC_INFO | DATA_VALID
    assert hdr.gso_type == (GSO_TCPV4 if version == 4 else GSO_TCPV6)
    assert (hdr.csum_start, hdr.csum_offset, hdr.gso_size) == (7, 0, size)
    assert p.payload == b"".join(payload(s) for s in segs)
    assert p.checksums_ok(frame)           # IPv4 header and TCP checksums, reference sum


def test_rsc_trusted_input_gives_the_same_bytes() -> None:
    """DATA_VALID input skips verification; the payload sum then comes from
    the check fields and must give the very same checksum (odd sizes too)."""
    segs = TcpFlow().data(5, size=1001) + TcpFlow(sport=1).data(3, size=77)
    plain, trusted = Coalescer(mode="rsc"), Coalescer(mode="rsc")
    run(plain, segs)
    for s in segs:
        trusted.push(s, 0, VnetHdr(flags=DATA_VALID))
    assert plain.flush() == trusted.flush()


def test_trusted_input_is_not_checked() -> None:
    bad = TcpFlow().data(3, bad_csum=True)
    co = Coalescer()
    for s in bad:
        co.push(s, 0, VnetHdr(flags=DATA_VALID))
    assert [h.gso_size for h, _ in co.flush()] == [MSS]
    assert stat(co, "bypass_bad_csum") == 0


def test_single_segment_unit_is_delivered_as_received() -> None:
    [seg] = TcpFlow().data(1)
    for mode in ("gso", "rsc"):
        co = Coalescer(mode=mode)
        assert co.push(seg, 0) == []
        assert co.flush() == [(VnetHdr(flags=DATA_VALID), seg)]
    co = Coalescer(data_valid=False)
    co.push(seg, 0)
    assert co.flush() == [(VnetHdr(), seg)]


def _partial(seg: bytes) -> bytes:
    """The segment as the host's own stack hands it over: TCP check = pseudo sum."""
    pseudo = P.pseudo_sum(4, seg[26:30], seg[30:34], 6, len(seg) - 34)
    return seg[:50] + struct.pack("!H", pseudo) + seg[52:]


PARTIAL = VnetHdr(flags=NEEDS_CSUM, csum_start=34, csum_offset=16)


def test_partial_checksum_segments_coalesce() -> None:
    """Segments with NEEDS_CSUM (host-made, not yet summed) coalesce like verified ones."""
    segs = TcpFlow().data(3)
    parts = [_partial(x) for x in segs]
    co = Coalescer(mode="gso")
    for f in parts:
        assert co.push(f, 0, hdr=PARTIAL) == []
    [(hdr, unit)] = co.flush()
    assert hdr.flags == NEEDS_CSUM and hdr.gso_type == GSO_TCPV4
    assert payload(unit) == b"".join(payload(x) for x in segs)
    # The kernel's rule for such a unit: software GSO gives back valid segments.
    out = segment(hdr, unit)
    assert [payload(x) for x in out] == [payload(x) for x in segs]
    assert all(verify(x) for x in out)
    co = Coalescer(mode="rsc")
    for f in parts:
        co.push(f, 0, hdr=PARTIAL)
    [(hdr, unit)] = co.flush()
    assert hdr.flags & RSC_INFO and hdr.csum_start == 3 and verify(unit)


def test_single_partial_segment_keeps_needs_csum() -> None:
    [seg] = TcpFlow().data(1)
    part = _partial(seg)
    co = Coalescer()
    assert co.push(part, 0, hdr=PARTIAL) == []
    [(hdr, frame)] = co.flush()
    assert frame == part
    assert (hdr.flags, hdr.csum_start, hdr.csum_offset) == (NEEDS_CSUM, 34, 16)


def test_psh_closes_the_unit_it_joins() -> None:
    flow = TcpFlow()
    segs = flow.data(4) + flow.data(1, flags=TCP_ACK | TCP_PSH)
    co = Coalescer()
    out = run(co, segs)
    assert len(out) == 1 and parse_tcp(out[0][1]).flags == TCP_ACK | TCP_PSH
    assert out[0][0].gso_size == MSS and stat(co, "final_psh") == 1
    assert co.held == 0


def test_short_segment_closes_the_unit() -> None:
    flow = TcpFlow()
    out = run(Coalescer(), flow.data(3) + flow.data(1, size=100) + flow.data(1))
    assert [len(payload(f)) for _, f in out] == [3 * MSS + 100]


# --- time -----------------------------------------------------------------------

def test_timer_100us_arrivals_300us_interval() -> None:
    """Segments every 100 µs against a 300 µs interval: units of three."""
    flow = TcpFlow()
    segs = flow.data(10)
    co = Coalescer(interval_ns=300 * US)
    assert co.deadline() is None
    assert run(co, segs[:1], 0) == []
    assert co.push(segs[1], 100 * US) == [] and co.push(segs[2], 200 * US) == []
    assert co.deadline() == 300 * US
    assert co.poll(299 * US) == []
    [(hdr, frame)] = co.poll(300 * US)
    assert payload(frame) == b"".join(payload(s) for s in segs[:3]) and hdr.gso_size == MSS
    assert co.deadline() is None and stat(co, "timer_flushes") == 1
    # Without a poll, the flow's next segment finds its unit expired.
    for i, s in enumerate(segs[3:6]):
        assert co.push(s, (300 + 100 * i) * US) == []
    out = co.push(segs[6], 600 * US)
    assert [len(payload(f)) for _, f in out] == [3 * MSS]
    assert co.deadline() == 900 * US and stat(co, "timer_flushes") == 2


def test_push_batch_polls_before_each_frame() -> None:
    segs = TcpFlow().data(10)
    co = Coalescer(interval_ns=300 * US)
    out = co.push_batch(segs, [i * 100 * US for i in range(10)])
    assert [len(payload(f)) // MSS for _, f in out] == [3, 3, 3]
    assert co.last_kinds == [OutKind.UNIT] * 3
    assert [len(payload(f)) // MSS for _, f in co.flush()] == [1]


def test_push_batch_equals_push_and_poll() -> None:
    flows = [TcpFlow(sport=50000 + i, version=4 + 2 * (i % 2)) for i in range(5)]
    frames = []
    for r in range(12):
        for fl in flows:
            frames += fl.data(1, size=MSS if r % 5 else 700)
    times = [i * 37 * US for i in range(len(frames))]
    a, b = Coalescer(interval_ns=250 * US), Coalescer(interval_ns=250 * US)
    batch = a.push_batch(frames, times) + a.flush()
    single = []
    for f, t in zip(frames, times, strict=True):
        single += b.poll(t)
        single += b.push(f, t)
    single += b.flush()
    assert batch == single and a.stats == b.stats


def test_flush_delivers_everything_earliest_first() -> None:
    co = Coalescer()
    flows = [TcpFlow(sport=s) for s in (3, 1, 2)]
    for i, fl in enumerate(flows):
        co.push(fl.data(1)[0], i * US)
    assert co.held == 3
    out = co.flush()
    assert [parse_tcp(f).key[2] for _, f in out] == [3, 1, 2]
    assert co.held == 0 and co.flush() == [] and stat(co, "drained") == 3


# --- what joins, what does not ------------------------------------------------

def test_max_bytes_bounds_the_ip_packet() -> None:
    co = Coalescer(max_bytes=5000)
    out = run(co, TcpFlow().data(9)) + co.flush()
    assert [len(payload(f)) // MSS for _, f in out] == [3, 3, 3]
    assert all(len(f) - 14 <= 5000 for _, f in out) and stat(co, "over_size") == 2


def test_default_limit_is_the_16_bit_ip_length() -> None:
    out = run(co := Coalescer(), TcpFlow(version=6).data(46)) + co.flush()
    assert [len(f) - 14 for _, f in out] == [40 + 20 + 45 * MSS, 40 + 20 + MSS]


def test_timestamps_coalesce_while_equal() -> None:
    flow = TcpFlow()
    segs = flow.data(6, size=MSS - 12, opts=ts_option(5, 9))
    segs += flow.data(3, size=MSS - 12, opts=ts_option(6, 9))
    co = Coalescer()
    out = run(co, segs) + co.flush()
    assert [len(payload(f)) // (MSS - 12) for _, f in out] == [6, 3]
    assert stat(co, "options_mismatch") == 1


@pytest.mark.parametrize("change,counter", [
    ({"ttl": 63}, "header_mismatch"), ({"tos": 4}, "header_mismatch"),
    ({"df": False}, "header_mismatch"), ({"window": 9}, "window_updates"),
    ({"ack": 1}, "ack_changed"), ({"opts": ts_option(1, 1)}, "options_mismatch"),
    ({"urg": 5}, "header_mismatch"),
])
def test_header_change_starts_a_new_unit(change: dict, counter: str) -> None:
    flow = TcpFlow()
    co = Coalescer()
    size = MSS - len(change.get("opts", b""))
    out = run(co, flow.data(3, size=size) + flow.data(3, size=size, **change)) + co.flush()
    assert [len(payload(f)) // size for _, f in out] == [3, 3]
    assert stat(co, counter) == 1


def test_out_of_order_and_out_of_window() -> None:
    flow = TcpFlow()
    segs = flow.data(6)
    far = flow.seg(b"x" * MSS, seq=flow.seq + 100_000)
    co = Coalescer()
    out = run(co, segs[:3] + [segs[4], far]) + co.flush()
    assert [len(payload(f)) for _, f in out] == [3 * MSS, MSS, MSS]
    assert stat(co, "out_of_order") == 1 and stat(co, "out_of_window") == 1


def test_ip_id_must_increment_in_gso_mode_and_may_be_fixed_in_rsc_mode() -> None:
    fixed = [TcpFlow().seg(b"q" * MSS, seq=1000 + i * MSS, ident=7) for i in range(4)]
    gso, rsc = Coalescer(mode="gso"), Coalescer(mode="rsc")
    assert len(run(gso, fixed) + gso.flush()) == 4
    [(hdr, _)] = run(rsc, fixed) + rsc.flush()
    assert hdr.csum_start == 4


def test_rsc_mode_takes_a_moving_ack_and_carries_the_newest() -> None:
    flow = TcpFlow()
    segs = [flow.data(1, ack=7_000_000 + i * 100, window=500 + i)[0] for i in range(4)]
    rsc, gso = Coalescer(mode="rsc"), Coalescer(mode="gso")
    [(hdr, frame)] = run(rsc, segs) + rsc.flush()
    p = parse_tcp(frame)
    assert (hdr.csum_start, p.ack, p.window) == (4, 7_000_300, 503) and p.checksums_ok(frame)
    assert len(run(gso, segs) + gso.flush()) == 4 and stat(gso, "ack_changed") == 3
    backwards = flow.data(1, ack=6_000_000)
    run(rsc, flow.data(1) + backwards)
    assert stat(rsc, "out_of_window") == 1


def test_rsc_mode_absorbs_duplicate_acks_and_counts_them() -> None:
    flow = TcpFlow()
    segs = flow.data(4) + [flow.seg(b"") for _ in range(3)] + flow.data(1, flags=TCP_ACK | TCP_PSH)
    co = Coalescer(mode="rsc")
    [(hdr, frame)] = run(co, segs)
    assert (hdr.csum_start, hdr.csum_offset) == (5, 3)
    assert stat(co, "dup_acks") == 3 and parse_tcp(frame).checksums_ok(frame)


def test_gso_mode_delivers_acks_after_the_unit_and_counts_them() -> None:
    flow = TcpFlow()
    co = Coalescer(mode="gso")
    out = run(co, flow.data(3) + [flow.seg(b"")])            # duplicate ACK
    assert [len(payload(f)) for _, f in out] == [3 * MSS, 0]
    out = run(co, flow.data(2) + [flow.seg(b"", window=1)])  # window update
    out += run(co, flow.data(2) + [flow.seg(b"", ack=1)])    # ACK moved
    out += run(co, [TcpFlow(sport=9).seg(b"")])              # nothing held
    assert [len(payload(f)) for _, f in out] == [2 * MSS, 0, 2 * MSS, 0, 0]
    assert (stat(co, "dup_acks"), stat(co, "window_updates"), stat(co, "pure_acks")) == (1, 1, 2)
    assert co.last_kinds == [OutKind.SEGMENT]


@pytest.mark.parametrize("flag,counter", [
    (TCP_FIN, "final_fin"), (TCP_RST, "final_rst"), (TCP_URG, "final_urg"),
    (TCP_CWR, "final_cwr"), (TCP_ECE, "final_ece"),
])
def test_control_flags_deliver_the_unit_then_the_segment(flag: int, counter: str) -> None:
    flow = TcpFlow()
    segs = flow.data(3)
    ctl = flow.data(1, flags=TCP_ACK | flag)[0]
    co = Coalescer()
    out = run(co, segs + [ctl])
    assert [len(payload(f)) for _, f in out] == [3 * MSS, MSS]
    assert out[1] == (VnetHdr(flags=DATA_VALID), ctl)
    assert co.last_kinds == [OutKind.UNIT, OutKind.SEGMENT] and stat(co, counter) == 1
    assert co.held == 0


def test_syn_bypasses_after_the_flows_unit() -> None:
    flow = TcpFlow()
    syn = flow.seg(b"", flags=TCP_SYN, advance=False)
    co = Coalescer()
    out = run(co, flow.data(2) + [syn])
    assert out[1] == (VnetHdr(), syn) and co.last_kinds == [OutKind.UNIT, OutKind.BYPASS]
    assert stat(co, "bypass_syn") == 1


def test_bad_checksum_bypasses_and_leaves_the_unit_held() -> None:
    flow = TcpFlow()
    good = flow.data(2)
    bad = flow.data(1, bad_csum=True)[0]
    co = Coalescer()
    assert run(co, good + [bad]) == [(VnetHdr(), bad)]
    assert co.held == 1 and stat(co, "bypass_bad_csum") == 1


def _ipv4_tcp(**kw: object) -> bytes:
    return TcpFlow().data(1, size=100, **kw)[0]   # type: ignore[arg-type]


def _set(frame: bytes, off: int, value: bytes) -> bytes:
    return frame[:off] + value + frame[off + len(value):]


def _bypass_frames() -> list[tuple[str, bytes, VnetHdr | None, dict]]:
    seg = _ipv4_tcp()
    v6 = TcpFlow(version=6).data(1, size=100)[0]
    frag = _set(seg, 14 + 6, b"\x20\x00")                 # MF
    return [
        ("not_ip", P.eth(ethertype=0x0806) + bytes(28), None, {}),
        ("ip_version", _set(seg, 14, b"\x65"), None, {}),
        ("ip_options", _ipv4_tcp(ip_options=b"\x01\x01\x01\x00"), None, {}),
        ("ipv6_ext", _set(v6, 14 + 6, b"\x00"), None, {}),
        ("fragment", frag, None, {}),
        ("not_tcp", P.eth() + P.ipv4(17, 8) + P.udp(), None, {}),
        ("bad_csum", _set(seg, 14 + 10, b"\x00\x00"), None, {}),    # IPv4 header
        ("too_small", seg[:40], None, {}),
        ("too_small", b"\x01" * 5, None, {}),
        ("too_large", _ipv4_tcp(), None, {"max_bytes": 100}),
        ("too_large", seg + bytes(70000), None, {}),
        # NEEDS_CSUM anywhere but the TCP check field is left alone.
        ("offloaded", seg, VnetHdr(flags=NEEDS_CSUM, csum_start=34, csum_offset=6), {}),
        ("offloaded", seg, VnetHdr(gso_type=GSO_TCPV4, gso_size=10), {}),
        ("disabled", v6, None, {"ipv6": False}),
    ]


@pytest.mark.parametrize("reason,frame,hdr,kw", _bypass_frames(),
                         ids=[b[0] for b in _bypass_frames()])
def test_bypass_is_untouched_and_counted(reason: str, frame: bytes, hdr: VnetHdr | None,
                                         kw: dict) -> None:
    co = Coalescer(**kw)
    assert co.push(frame, 0, hdr) == [(hdr or VnetHdr(), frame)]
    assert co.last_kinds == [OutKind.BYPASS]
    assert stat(co, f"bypass_{reason}") == 1 and co.held == 0


def test_padded_segment_goes_alone() -> None:
    flow = TcpFlow()
    co = Coalescer()
    small = flow.data(1, size=4)[0]
    out = run(co, flow.data(2) + [small])
    assert out[1][1] == small and len(small) == 60 and stat(co, "final_padded") == 1


def test_interleaved_flows_and_lru_eviction() -> None:
    flows = [TcpFlow(sport=100 + i) for i in range(3)]
    co = Coalescer(max_flows=2)
    assert run(co, flows[0].data(2) + flows[1].data(2)) == []
    run(co, flows[0].data(1))                      # flow 1 is now least recently used
    out = run(co, flows[2].data(1))
    assert [parse_tcp(f).key[2] for _, f in out] == [101] and stat(co, "evictions") == 1
    assert co.held == 2


def test_vlan_tagged_flow_coalesces_and_tags_must_match() -> None:
    a, b = TcpFlow(vlans=(5,)), TcpFlow(vlans=(6,))
    co = Coalescer()
    out = run(co, a.data(3)) + co.flush()
    assert len(out) == 1 and out[0][0].csum_start == 14 + 4 + 20
    b.seq = a.seq
    out = run(co, a.data(2) + b.data(1)) + co.flush()
    assert len(out) == 2 and stat(co, "header_mismatch") == 1


# --- API ------------------------------------------------------------------------

def test_features_choose_the_mode() -> None:
    bit = F.bit
    tso = bit(F.VIRTIO_NET_F_GUEST_TSO4) | bit(F.VIRTIO_NET_F_GUEST_TSO6)
    assert coalescing_for_features(0) is None
    assert coalescing_for_features(tso) == Coalescing(Mode.GSO, True, True)
    assert coalescing_for_features(bit(F.VIRTIO_NET_F_GUEST_TSO4)) == Coalescing(Mode.GSO, True,
                                                                                False)
    assert coalescing_for_features(tso | bit(F.VIRTIO_NET_F_RSC_EXT)) == Coalescing(
        Mode.RSC, True, True)
    assert coalescing_for_features(tso | bit(F.VIRTIO_NET_F_GUEST_RSC6)) == Coalescing(
        Mode.RSC, False, True)
    co = Coalescer.for_features(bit(F.VIRTIO_NET_F_GUEST_TSO6), interval_ns=50 * US)
    assert co is not None and co.mode is Mode.GSO and co.interval_ns == 50 * US
    assert Coalescer.for_features(bit(F.VIRTIO_NET_F_GUEST_CSUM)) is None


@pytest.mark.parametrize("kw", [
    {"interval_ns": 0}, {"interval_ns": -1}, {"max_bytes": 99}, {"max_bytes": 65536},
    {"max_flows": 0}, {"max_flows": 65}, {"mode": "lro"}, {"interval_ns": 1.5},
])
def test_bad_arguments_are_refused(kw: dict) -> None:
    with pytest.raises((ValueError, KeyError)):
        Coalescer(**kw)


def test_bad_times_are_refused() -> None:
    co = Coalescer()
    for t in (-1, 1 << 64, 0.5):
        with pytest.raises(ValueError):
            co.push(b"", t)
        with pytest.raises(ValueError):
            co.poll(t)
    with pytest.raises(ValueError):
        co.push_batch([b"", b""], [0])


def test_defaults_and_stats_keys() -> None:
    co = Coalescer()
    assert co.interval_ns == DEFAULT_INTERVAL_NS == 300_000 and co.max_bytes == 65535
    assert co.mode is Mode.GSO
    keys = co.stats.keys()
    for k in ("received", "coalesced", "dup_acks", "timer_flushes", "drained", "out_of_order",
              "out_of_window", "bypass_bad_csum", "final_fin", "final_cwr"):
        assert f"rsc_{k}" in keys
    assert co.push(b"", 0) == [(VnetHdr(), b"")] and co.stats["rsc_received"] == 1


def test_counts_add_up_on_a_mixed_stream() -> None:
    flow = TcpFlow()
    frames = flow.data(50) + [flow.seg(b"")] + flow.data(5, flags=TCP_ACK | TCP_PSH)
    frames += [P.eth(ethertype=0x0806) + bytes(28)]
    co = Coalescer()
    out = run(co, frames) + co.flush()
    # A full unit of 45, the rest (5) before the ACK, the ACK, five PSH
    # segments that each go alone (a PSH head is complete), the ARP frame.
    assert [len(payload(f)) // MSS if parse_tcp(f) else -1 for _, f in out] == \
        [45, 5, 0, 1, 1, 1, 1, 1, -1]
    st = {k.removeprefix("rsc_"): v for k, v in co.stats.items() if v}
    assert st == {"received": 57, "coalesced": 48, "units": 2, "units_coalesced": 2,
                  "delivered": 9, "over_size": 1, "dup_acks": 1, "final_psh": 5,
                  "bypass_not_ip": 1}


def test_deadline_saturates_at_the_end_of_the_clock() -> None:
    end = (1 << 64) - 1
    co = Coalescer(interval_ns=300 * US)
    co.push(TcpFlow().data(1)[0], end - 100)
    assert co.deadline() == end and co.poll(end - 1) == [] and len(co.poll(end)) == 1
