"""Fuzzing the RSC engine: hostile frames and streams never crash it, and
nothing is lost, duplicated or changed.

Streams are random mixes of TCP flows (data, ACKs, control flags, options,
reordering, retransmissions, bad checksums), mutated copies, random bytes and
input headers, with random times and polls.  Invariants (gso mode): every
output is an input frame untouched (bypass, lone segment, unit of one), or a
coalesced GSO packet that the project's software GSO (vmdnet.offload.segment,
itself checked against the kernel) splits back into input frames; after a
flush every input has come out exactly once.  rsc mode: every coalesced unit
has correct IPv4 and TCP checksums and the counts add up.  Memory safety of
the same paths is fuzzed under ASan/UBSan by csrc/tests/test_rsc.c.
"""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from oracle.test_rsc_gro_streams import (
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

from vmdnet.offload import Coalescer, VnetHdr, segment
from vmdnet.offload.rsc import OutKind

US = 1000
RSC_INFO = 4
FLAGS = [TCP_ACK] * 12 + [TCP_ACK | TCP_PSH] * 2 + [
    TCP_ACK | f for f in (TCP_FIN, TCP_RST, TCP_URG, TCP_CWR, TCP_ECE)] + [TCP_SYN]
SIZES = [0, 1, 4, 7, 100, 999, 1447, 1448, 1448, 1448, 1448, 3000, 9000]


def fuzz(examples: int) -> settings:
    """No per-example deadline (2 shared cores), `examples` runs."""
    return settings(deadline=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _flows(rng: random.Random) -> list[TcpFlow]:
    flows = []
    for i in range(rng.randint(1, 4)):
        version = rng.choice((4, 6))
        flows.append(TcpFlow(version=version, sport=30000 + i,
                             vlans=rng.choice(((), (), (7,), (8, 9)))))
    return flows


def _segment(rng: random.Random, fl: TcpFlow) -> bytes:
    """One segment of a mostly well-behaved flow, with the odd surprise."""
    size = rng.choice(SIZES)
    kw: dict = {"flags": rng.choice(FLAGS)}
    if rng.random() < 0.3:
        kw["opts"] = ts_option(rng.choice((1, 1, 2)), 5)
    if rng.random() < 0.05:
        kw["window"] = rng.choice((1, 502))
    if rng.random() < 0.05:
        kw["ack"] = rng.choice((1, 7_000_000, 7_000_100))
    if rng.random() < 0.03:
        kw["ttl"] = 1
    if rng.random() < 0.03:
        kw["bad_csum"] = True
    if rng.random() < 0.05:
        kw["ident"] = 0x4242
    if rng.random() < 0.05:
        return fl.seg(bytes(size), seq=fl.seq - rng.choice((1448, 2896, 10)), **kw)
    if rng.random() < 0.05:
        return fl.seg(bytes(size), seq=fl.seq + 1448, advance=False, **kw)
    return fl.seg(bytes(rng.getrandbits(8) for _ in range(min(size, 64))) + bytes(
        max(0, size - 64)), **kw)


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        what = rng.random()
        if what < 0.6 and b:
            b[rng.randrange(min(len(b), 80))] = rng.getrandbits(8)
        elif what < 0.8:
            del b[rng.randrange(len(b) + 1):]
        else:
            b += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
    return bytes(b)


def stream(seed: int, n: int) -> list[tuple[bytes, VnetHdr | None, int]]:
    """(frame, input header, time) in arrival order."""
    rng = random.Random(seed)
    flows = _flows(rng)
    t, out = 0, []
    for _ in range(n):
        frame = _segment(rng, rng.choice(flows))
        r = rng.random()
        if r < 0.08:
            frame = _mutate(rng, frame)
        elif r < 0.1:
            frame = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 120)))
        hdr = None
        if rng.random() < 0.03:
            hdr = VnetHdr(flags=rng.choice((1, 0)), gso_type=rng.choice((0, 1, 4)),
                          gso_size=rng.choice((0, 1448)))
        t += rng.choice((0, 0, 10, 50, 100, 400)) * US
        out.append((frame, hdr, t))
    return out


def _drive(co: Coalescer, items: list, polls: bool) -> tuple[list, list[OutKind]]:
    out: list = []
    kinds: list[OutKind] = []
    for frame, hdr, t in items:
        if polls:
            out += co.poll(t)
            kinds += co.last_kinds
        out += co.push(frame, t, hdr)
        kinds += co.last_kinds
    out += co.flush()
    kinds += co.last_kinds
    return out, kinds


def _take(pool: Counter, frame: bytes) -> None:
    assert pool[frame] > 0, f"output frame is no input ({frame[:60].hex()})"
    pool[frame] -= 1


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), polls=st.booleans())
@example(seed=131432815, n=103, polls=False)   # one frame twice, with and without a header
@fuzz(300)
def test_gso_mode_loses_changes_and_duplicates_nothing(seed: int, n: int, polls: bool) -> None:
    items = [(f, h, t) for f, h, t in stream(seed, n) if not (h and h.flags & 2)]
    co = Coalescer(interval_ns=300 * US, mode="gso", max_flows=3)
    out, kinds = _drive(co, items, polls)
    pool = Counter(f for f, _, _ in items)
    # The same bytes may arrive twice with different headers (a stream repeats
    # segments): a bypassed frame must carry one of the headers it came with.
    hdrs: dict[bytes, list[VnetHdr]] = {}
    for f, h, _ in items:
        hdrs.setdefault(f, []).append(h or VnetHdr())
    for (hdr, frame), kind in zip(out, kinds, strict=True):
        if kind == OutKind.BYPASS:
            assert hdr in hdrs[frame]
            _take(pool, frame)
        elif hdr.gso_type:
            assert kind == OutKind.UNIT
            for seg in segment(hdr, frame):
                _take(pool, seg)
        else:
            _take(pool, frame)
    assert +pool == Counter() and co.held == 0
    assert co.stats["rsc_received"] == len(items) and co.stats["rsc_delivered"] == len(out)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120))
@fuzz(200)
def test_rsc_mode_units_are_valid_and_counts_add_up(seed: int, n: int) -> None:
    items = stream(seed, n)
    co = Coalescer(interval_ns=300 * US, mode="rsc", max_flows=2)
    out, kinds = _drive(co, items, True)
    carried = 0
    for (hdr, frame), kind in zip(out, kinds, strict=True):
        if hdr.flags & RSC_INFO:
            p = parse_tcp(frame)
            assert kind == OutKind.UNIT and p is not None and p.checksums_ok(frame)
            carried += hdr.csum_start + hdr.csum_offset
        else:
            carried += 1
    assert carried == len(items) and co.held == 0


@given(data=st.binary(max_size=200), t=st.integers(0, 2**64 - 1),
       hdr=st.one_of(st.none(), st.builds(VnetHdr, flags=st.integers(0, 255),
                                          gso_type=st.integers(0, 255))))
@fuzz(400)
def test_random_bytes_come_back_untouched(data: bytes, t: int, hdr: VnetHdr | None) -> None:
    co = Coalescer()
    out = co.push(data, t, hdr) + co.poll(t) + co.flush()
    assert [f for _, f in out] == [data]


@given(seed=st.integers(0, 2**32 - 1))
@fuzz(100)
def test_batch_and_single_calls_agree(seed: int) -> None:
    items = [(f, h, t) for f, h, t in stream(seed, 60)]
    a, b = Coalescer(interval_ns=200 * US), Coalescer(interval_ns=200 * US)
    batch = a.push_batch([(h, f) if h else f for f, h, _ in items], [t for *_, t in items])
    batch += a.flush()
    single, _ = _drive(b, items, True)
    assert batch == single and a.stats == b.stats
