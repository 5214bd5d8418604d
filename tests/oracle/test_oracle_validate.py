"""validate() against the kernel's own acceptance of tap writes.

The contract: every header/frame pair whose write the kernel refuses (EINVAL)
validate() refuses too.  Where the kernel accepts a write that validate()
refuses, the pair must fall under one of the documented stricter rules below
(csrc/vn_offload.c lists them), each shown here with what the kernel does with
such a write.  Where both accept, segment() must send what the kernel sends.

Stricter rules (the kernel accepts the write; vmdnet refuses it):
  gso_no_csum       GSO without NEEDS_CSUM (every virtio driver sets it with
                    GSO); the kernel checksums and segments it itself.
  csum_placement    GSO with csum_start not at the TCP/UDP header, or
                    csum_offset not its check field.  For TSO/USO the kernel
                    refuses a wrong csum_offset itself, takes a wrong
                    csum_start and mostly drops the packet when it segments;
                    UFO ignores both and segments.
  udp_ecn           ECN on a UDP gso_type: the kernel ignores the bit with UFO
                    (with USO it refuses the write itself).
  ufo_tiny          UFO with gso_size below the 8-byte UDP header; the kernel
                    splits it into that many fragments.
  tcp_options       TCP GSO longer than gso_size only by its TCP options (the
                    kernel's 20-byte rule marks it GSO, its TCP segmentation
                    then refuses it): dropped.
  not_as_named      GSO on a frame that is not what gso_type names: not IP,
                    the other IP version, another L4 protocol, a truncated L4
                    header, an IP fragment, more than two VLAN tags or more than
                    eight IPv6 extension headers; the kernel drops most of them
                    when it segments, passes those that need no splitting, and
                    does segment IPv4 fragments, up to 7 VLAN tags and any
                    number of extension headers (measured through a bridge).
  hdr_len_slack     hdr_len past the frame's end by at most vnet_hdr_sz - 10:
                    the kernel compares hdr_len with what is left of the write
                    after the first 10 header bytes, so with a 12-byte header it
                    takes hdr_len = len + 2.
  frame_long        a frame longer than VN_MAX_FRAME (an IPv4 packet of 64 KiB
                    plus Ethernet and two VLAN tags): a tap takes any length,
                    a maximal IPv6 packet (40 bytes longer) included.
"""

from __future__ import annotations

import errno
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import oracle_cases as C
import pktlib as P
import pytest
from netns import VNET_HDR_SZ, TapPair
from oracle_hdrs import Parsed, parse, v6_frag_header

from vmdnet.offload import MAX_FRAME, BadHeader, Reason, VnetHdr, segment, validate
from vmdnet.tun import set_vnet_hdr_sz

# Fuzz: chunks of mutated headers, each chunk seeded from FUZZ_SEED and its index.
FUZZ_SEED = 20261122
FUZZ_CHUNKS = 40
FUZZ_PER_CHUNK = 125
# The first 10 bytes of the header are consumed before the kernel's hdr_len check.
HDR_LEN_SLACK = VNET_HDR_SZ - 10
NEEDS_CSUM = 1
GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 1, 3, 4, 5, 0x80
# vn_parse's bounds (csrc/vn_pkt.h): VN_MAX_VLAN_TAGS, VN_MAX_IPV6_EXT.
MAX_VLAN_TAGS = 2
MAX_IPV6_EXT = 8


def _base(h: VnetHdr) -> int:
    return h.gso_type & ~GSO_ECN & 0xFF


def _want_proto(h: VnetHdr) -> int:
    return C.IPPROTO_TCP if _base(h) in (GSO_TCPV4, GSO_TCPV6) else C.IPPROTO_UDP


def _is_gso(h: VnetHdr) -> bool:
    return h.gso_type != 0


# --- the stricter rules: predicates on (header, frame, its parse) -----------------

def r_gso_no_csum(h: VnetHdr, f: bytes, p: Parsed) -> bool:
    return _is_gso(h) and not h.flags & NEEDS_CSUM


def r_csum_placement(h: VnetHdr, f: bytes, p: Parsed) -> bool:
    field = C.TCP_CHECK_OFF if _want_proto(h) == C.IPPROTO_TCP else C.UDP_CHECK_OFF
    return _is_gso(h) and (p.l4_off == 0 or h.csum_start != p.l4_off or h.csum_offset != field)


def r_udp_ecn(h: VnetHdr, f: bytes, p: Parsed) -> bool:
    return bool(h.gso_type & GSO_ECN) and _base(h) in (GSO_UDP, GSO_UDP_L4)


def r_ufo_tiny(h: VnetHdr, f: bytes, p: Parsed) -> bool:
    return _base(h) == GSO_UDP and h.gso_size < 8


def r_tcp_options(h: VnetHdr, f: bytes, p: Parsed) -> bool:
    if _base(h) not in (GSO_TCPV4, GSO_TCPV6) or p.l4_proto != C.IPPROTO_TCP or not p.l4_off:
        return False
    return len(f) - p.l4_off - p.tcp_hlen <= h.gso_size < len(f) - p.l4_off - 20


def r_not_as_named(h: VnetHdr, f: bytes, p: Parsed) -> bool:
    if not _is_gso(h):
        return False
    wrong_version = ((_base(h) == GSO_TCPV4 and p.ip_version != 4)
                     or (_base(h) == GSO_TCPV6 and p.ip_version != 6))
    return (p.ip_version == 0 or not p.ihl_ok or p.fragment or wrong_version
            or p.vlan_tags > MAX_VLAN_TAGS or p.ext_count > MAX_IPV6_EXT
            or p.l4_proto != _want_proto(h) or p.l4_off == 0)


def r_hdr_len_slack(h: VnetHdr, f: bytes, p: Parsed) -> bool:
    return len(f) < h.hdr_len <= len(f) + HDR_LEN_SLACK


def r_frame_long(h: VnetHdr, f: bytes, p: Parsed) -> bool:
    return len(f) > MAX_FRAME


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[VnetHdr, bytes, Parsed], bool]
    reasons: frozenset[Reason]       # what validate() may say for it


STRICTER = (
    Rule("gso_no_csum", r_gso_no_csum, frozenset({Reason.GSO_NO_CSUM})),
    Rule("csum_placement", r_csum_placement, frozenset({Reason.CSUM_START, Reason.CSUM_OFFSET})),
    Rule("udp_ecn", r_udp_ecn, frozenset({Reason.GSO_TYPE})),
    Rule("ufo_tiny", r_ufo_tiny, frozenset({Reason.GSO_SIZE})),
    Rule("tcp_options", r_tcp_options, frozenset({Reason.GSO_SIZE})),
    Rule("not_as_named", r_not_as_named, frozenset({Reason.L3, Reason.L4})),
    Rule("hdr_len_slack", r_hdr_len_slack, frozenset({Reason.HDR_LEN})),
    Rule("frame_long", r_frame_long, frozenset({Reason.FRAME_LONG})),
)
RULES = {r.name: r for r in STRICTER}


def explaining_rules(h: VnetHdr, f: bytes, reason: Reason) -> list[str]:
    """The documented stricter rules that cover validate() refusing with `reason`."""
    p = parse(f)
    return [r.name for r in STRICTER if reason in r.reasons and r.applies(h, f, p)]


# --- helpers -----------------------------------------------------------------------

def _refusal(h: VnetHdr, f: bytes) -> Reason | None:
    try:
        validate(h, f)
    except BadHeader as e:
        return e.reason
    return None


def _kernel(pair: TapPair, h: VnetHdr, f: bytes) -> list[bytes] | int:
    """The kernel's packets for the write, or the errno it refused it with."""
    if len(f) < ETH_TYPE_END:
        # No source MAC to tell its packets by; the kernel refuses these anyway.
        rc = pair.kernel_accepts(h, f)
        assert rc, f"the kernel took a {len(f)}-byte frame"
        return rc
    try:
        return pair.kernel_segment(h, f)
    except OSError as e:
        return e.errno or errno.EIO


def _ours(h: VnetHdr, f: bytes, kernel: list[bytes]) -> list[bytes]:
    frag = v6_frag_header(kernel[0]) if kernel and _base(h) == GSO_UDP else None
    return segment(h, f, v6_frag_id=frag[1] if frag else 0)


def _case(pair: TapPair, spec: C.Spec) -> C.Case:
    return C.build(spec, pair.next_mac())


TSO4 = C.Spec("tso4", "tcp", 4, 3000, 1000)
TSO6 = C.Spec("tso6", "tcp", 6, 3000, 1000)
USO4 = C.Spec("uso4", "uso", 4, 3000, 1000)
UFO4 = C.Spec("ufo4", "ufo", 4, 3000, 1000)
CSUM4 = C.Spec("csum4", "csum_tcp", 4, 300)


# --- writes the kernel refuses: validate() must refuse them too --------------------

def _refused_cases() -> list[tuple[str, C.Spec, Callable[[VnetHdr, bytes], tuple[VnetHdr, bytes]]]]:
    out: list[tuple[str, C.Spec, Callable[[VnetHdr, bytes], tuple[VnetHdr, bytes]]]] = []
    for n in range(1, 14):
        out.append((f"hdr_len_{n}", CSUM4, lambda h, f, n=n: (replace(h, hdr_len=n, flags=0), f)))
    out += [
        ("hdr_len_past_slack", CSUM4,
         lambda h, f: (replace(h, hdr_len=len(f) + HDR_LEN_SLACK + 1), f)),
        ("csum_start_0", CSUM4, lambda h, f: (replace(h, csum_start=0), f)),
        ("csum_start_in_eth", CSUM4, lambda h, f: (replace(h, csum_start=12), f)),
        ("csum_start_19", CSUM4, lambda h, f: (replace(h, csum_start=19), f)),
        ("tso6_csum_start_39", TSO6, lambda h, f: (replace(h, csum_start=39), f)),
        ("csum_start_past_frame", CSUM4, lambda h, f: (replace(h, csum_start=len(f) + 1), f)),
        ("csum_field_past_frame", CSUM4,
         lambda h, f: (replace(h, csum_offset=len(f) - h.csum_start - 1), f)),
        ("tso_l4_header_past_frame", TSO4,
         lambda h, f: (replace(h, csum_start=len(f) - 18, csum_offset=0), f)),
        ("gso_size_0", TSO4, lambda h, f: (replace(h, gso_size=0), f)),
        ("gso_size_gso_by_frags", TSO4, lambda h, f: (replace(h, gso_size=0xFFFF), f)),
        ("uso_gso_size_gso_by_frags", USO4, lambda h, f: (replace(h, gso_size=0xFFFF), f)),
        ("uso_129_segments", C.Spec("uso129", "uso", 4, 129 * 100, 100), lambda h, f: (h, f)),
        ("uso_200_segments", C.Spec("uso200", "uso", 4, 200 * 8, 8), lambda h, f: (h, f)),
        # The kernel checks csum_offset for TSO and USO (not UFO) and refuses
        # ECN with USO (not with UFO).
        ("uso_ecn", USO4, lambda h, f: (replace(h, gso_type=GSO_UDP_L4 | GSO_ECN), f)),
        ("uso_on_tcp_frame", TSO4, lambda h, f: (replace(h, gso_type=GSO_UDP_L4), f)),
        ("tso_csum_offset_6", TSO4, lambda h, f: (replace(h, csum_offset=6), f)),
        ("uso_csum_offset_16", USO4, lambda h, f: (replace(h, csum_offset=16), f)),
    ]
    for gt in (0x02, 0x06, 0x07, 0x11, 0x21, 0x41, 0x80, 0xFF):
        out.append((f"gso_type_{gt:#04x}", TSO4, lambda h, f, gt=gt: (replace(h, gso_type=gt), f)))
    return out


REFUSED = _refused_cases()


@pytest.mark.parametrize("name,spec,mutate", REFUSED, ids=[c[0] for c in REFUSED])
def test_kernel_refusal_is_refused(pair: TapPair, name: str, spec: C.Spec,
                                   mutate: Callable[[VnetHdr, bytes], tuple[VnetHdr, bytes]]
                                   ) -> None:
    case = _case(pair, spec)
    h, f = mutate(case.hdr, case.frame)
    assert pair.kernel_accepts(h, f) == errno.EINVAL, "the kernel took it: not a refusal case"
    assert _refusal(h, f) is not None


# --- writes the kernel takes and validate() refuses: each documented rule ---------

def _three_tags(h: VnetHdr, f: bytes) -> tuple[VnetHdr, bytes]:
    tags = b"".join(P.eth(vlans=(5,))[12:16] for _ in range(3))
    return (replace(h, csum_start=h.csum_start + 12, hdr_len=h.hdr_len + 12),
            f[:12] + tags + f[12:])


def _nine_ext_headers(pair: TapPair) -> tuple[VnetHdr, bytes]:
    spec = C.Spec("tso6_ext9", "tcp", 6, 3000, 1000, v6_ext=(C.IPPROTO_DSTOPTS,) * 9)
    case = _case(pair, spec)
    return case.hdr, case.frame


def _ipv4_more_fragments(h: VnetHdr, f: bytes) -> tuple[VnetHdr, bytes]:
    b = bytearray(f)
    b[20] |= 0x20                        # MF in the IPv4 flags (l3 at 14)
    b[24:26] = b"\0\0"                   # header checksum: the kernel recomputes it
    return h, bytes(b)


# (name, rule, spec, mutate, what the kernel does: "drops" or "sends")
STRICTER_EXAMPLES = [
    ("tso_without_needs_csum", "gso_no_csum", TSO4,
     lambda h, f: (replace(h, flags=0), f), "sends"),
    ("tso_csum_start_off_by_2", "csum_placement", TSO4,
     lambda h, f: (replace(h, csum_start=h.csum_start + 2), f), "drops"),
    ("uso_csum_start_in_ip_header", "csum_placement", USO4,
     lambda h, f: (replace(h, csum_start=h.csum_start - 2), f), "drops"),
    ("ufo_csum_offset_16", "csum_placement", UFO4,
     lambda h, f: (replace(h, csum_offset=16), f), "sends"),
    ("ufo_ecn", "udp_ecn", UFO4, lambda h, f: (replace(h, gso_type=GSO_UDP | GSO_ECN), f),
     "sends"),
    ("ufo_gso_size_7", "ufo_tiny", UFO4, lambda h, f: (replace(h, gso_size=7), f), "sends"),
    ("tso_longer_only_by_options",
     "tcp_options", C.Spec("tso4_opts", "tcp", 4, 995, 1000, tcp_opts=C.TCP_OPT_TS),
     lambda h, f: (h, f), "drops"),
    ("tcpv4_gso_on_ipv6", "not_as_named", TSO6,
     lambda h, f: (replace(h, gso_type=GSO_TCPV4), f), "drops"),
    ("uso_on_tcp", "not_as_named", TSO4,
     lambda h, f: (replace(h, gso_type=GSO_UDP_L4, csum_offset=C.UDP_CHECK_OFF), f), "drops"),
    ("tso_ipv4_fragment", "not_as_named", TSO4, _ipv4_more_fragments, "sends"),
    ("tso_three_vlan_tags", "not_as_named", TSO4, _three_tags, "sends"),
    ("hdr_len_len_plus_2", "hdr_len_slack", CSUM4,
     lambda h, f: (replace(h, hdr_len=len(f) + HDR_LEN_SLACK), f), "sends"),
    ("tso6_maximal_ipv6_packet", "frame_long", C.Spec("tso6_max", "tcp", 6, 65515, 1448),
     lambda h, f: (h, f), "sends"),
]


@pytest.mark.parametrize("name,rule,spec,mutate,kernel_does", STRICTER_EXAMPLES,
                         ids=[e[0] for e in STRICTER_EXAMPLES])
def test_stricter_rule_example(pair: TapPair, name: str, rule: str, spec: C.Spec,
                               mutate: Callable[[VnetHdr, bytes], tuple[VnetHdr, bytes]],
                               kernel_does: str) -> None:
    case = _case(pair, spec)
    h, f = mutate(case.hdr, case.frame)
    _check_stricter(pair, h, f, rule, kernel_does)


def test_stricter_rule_nine_ipv6_extension_headers(pair: TapPair) -> None:
    h, f = _nine_ext_headers(pair)
    _check_stricter(pair, h, f, "not_as_named", "sends")


def _check_stricter(pair: TapPair, h: VnetHdr, f: bytes, rule: str, kernel_does: str) -> None:
    kernel = _kernel(pair, h, f)
    assert not isinstance(kernel, int), f"the kernel refused it (errno {kernel})"
    reason = _refusal(h, f)
    assert reason is not None, "validate() accepts it: not a stricter rule"
    assert rule in explaining_rules(h, f, reason), (rule, reason)
    assert (len(kernel) > 0) == (kernel_does == "sends"), (kernel_does, len(kernel))


def test_every_rule_has_an_example() -> None:
    shown = {e[1] for e in STRICTER_EXAMPLES}
    assert shown == set(RULES)


# --- fuzz: mutated headers and frames ----------------------------------------------

def _mutate(rnd: random.Random, case: C.Case) -> tuple[VnetHdr, bytes]:
    h, f, n = case.hdr, bytearray(case.frame), len(case.frame)
    for _ in range(rnd.randint(1, 3)):
        what = rnd.choice(("hdr_len", "csum_start", "csum_offset", "gso_type", "gso_size",
                           "flags", "truncate", "byte"))
        if what == "hdr_len":
            h = replace(h, hdr_len=rnd.choice((0, rnd.randint(1, 13), 14, rnd.randrange(n + 20),
                                               n, n + 1, n + 2, n + 3)) & 0xFFFF)
        elif what == "csum_start":
            h = replace(h, csum_start=rnd.choice((
                0, rnd.randrange(60), case.l4_off - 1, case.l4_off + 1, case.l4_off + 2,
                rnd.randrange(n + 20), n - 2, n, 19, 20, 39, 40)) & 0xFFFF)
        elif what == "csum_offset":
            h = replace(h, csum_offset=rnd.choice((0, 2, 6, 15, 16, 17, rnd.randrange(100), n,
                                                   rnd.randrange(0x10000))) & 0xFFFF)
        elif what == "gso_type":
            h = replace(h, gso_type=rnd.choice((0, 1, 2, 3, 4, 5, 6, 7, 0x11, 0x21, 0x41, 0x80,
                                                0x81, 0x83, 0x84, 0x85, rnd.randrange(256))))
        elif what == "gso_size":
            h = replace(h, gso_size=rnd.choice((0, 1, 2, 7, 8, 9, 0xFFFF, 0xFFFE,
                                                rnd.randrange(0x10000), rnd.randrange(100))))
        elif what == "flags":
            h = replace(h, flags=rnd.choice((0, 1, 2, 3, 4, 5, 0x80, 0x81, rnd.randrange(256))))
        elif what == "truncate":
            f = f[:rnd.randrange(len(f) + 1)]
        elif len(f) > ETH_TYPE_END:
            f[rnd.randrange(12, min(len(f), case.l4_off + 24))] = rnd.randrange(256)
    return h, bytes(f)


ETH_TYPE_END = 14
# skb_vlan_untag pulls the tag and the 2 bytes after it: shorter tagged frames drop.
VLAN_UNTAG_MIN = ETH_TYPE_END + 4 + 2
FUZZ_BASE = [s for s in C.edge_specs() + C.random_specs(200, FUZZ_SEED)
             if s.payload <= 20000]


@pytest.mark.parametrize("chunk", range(FUZZ_CHUNKS))
def test_fuzz_validate_against_kernel(pair: TapPair, chunk: int) -> None:
    rnd = random.Random(FUZZ_SEED * 1000 + chunk)
    problems: list[str] = []
    seen: Counter[str] = Counter()
    for i in range(FUZZ_PER_CHUNK):
        spec = rnd.choice(FUZZ_BASE)
        h, f = _mutate(rnd, _case(pair, spec))
        verdict, problem = _judge(pair, h, f)
        seen[verdict] += 1
        if problem:
            problems.append(f"#{i} from {spec.name}: {problem}\n    {h} frame {len(f)} B "
                            f"{f[:96].hex()}")
    assert not problems, f"{len(problems)} of {FUZZ_PER_CHUNK}:\n" + "\n".join(problems[:10])
    # Not vacuous: the kernel refused some, took some, and we compared output.
    assert seen["kernel refuses"] and seen["both accept"], seen


def _judge(pair: TapPair, h: VnetHdr, f: bytes) -> tuple[str, str | None]:
    """(verdict, problem): no problem when kernel and vmdnet agree, or differ
    only by a documented stricter rule."""
    kernel = _kernel(pair, h, f)
    reason = _refusal(h, f)
    if isinstance(kernel, int):
        return "kernel refuses", (None if reason is not None
                                  else f"kernel refuses (errno {kernel}), validate accepts")
    if reason is not None:
        return "stricter", (None if explaining_rules(h, f, reason) else
                            f"kernel accepts, validate refuses {reason.name}: "
                            "no documented rule covers it")
    ours = _ours(h, f, kernel)
    if ours != kernel and not (kernel == [] and _vlan_tag_cut_short(h, f)):
        return "both accept", (f"both accept, kernel sent {len(kernel)} packets, "
                               f"segment() {len(ours)}, they differ")
    return "both accept", None


def _vlan_tag_cut_short(h: VnetHdr, f: bytes) -> bool:
    """Not a validate() matter: the kernel's receive path (skb_vlan_untag)
    takes the write, then drops a VLAN-tagged frame with less than 2 bytes
    after its tag (shorter than 20 bytes; measured).  Without offloads there is
    nothing for vmdnet to do: segment() hands the frame back as it is, and the
    tap it is written to drops it the same way."""
    tpid = int.from_bytes(f[12:14], "big")
    return (h.gso_type == 0 and not h.flags & NEEDS_CSUM and tpid in (0x8100, 0x88A8)
            and len(f) < VLAN_UNTAG_MIN)


def test_short_vlan_frame_is_dropped_after_the_write(pair: TapPair) -> None:
    """Grounds _vlan_tag_cut_short: the write is taken (so validate() takes it
    too), the receive path drops tagged frames under 20 bytes."""
    for n, delivered in ((18, False), (19, False), (VLAN_UNTAG_MIN, True)):
        f = P.eth(src=pair.next_mac(), ethertype=0x88B6, vlans=(5,))
        f = f + bytes(n - len(f))
        assert pair.kernel_accepts(VnetHdr(), f) == 0
        validate(VnetHdr(), f)
        assert bool(pair.kernel_segment(VnetHdr(), f)) == delivered, n


@pytest.mark.parametrize("hdr_sz", [10, 12, 20])
def test_hdr_len_slack_is_header_size_minus_10(pair: TapPair, hdr_sz: int) -> None:
    """Grounds hdr_len_slack: the kernel checks hdr_len against the bytes left
    after the first 10 header bytes, so the slack grows with the header size."""
    case = _case(pair, C.Spec("plain", "plain", 4, 100))
    n = len(case.frame)
    try:
        set_vnet_hdr_sz(pair.a.fd, hdr_sz)
        for hdr_len, taken in ((n + hdr_sz - 10, True), (n + hdr_sz - 9, False)):
            raw = VnetHdr(hdr_len=hdr_len).pack(hdr_sz) + case.frame
            try:
                os.write(pair.a.fd, raw)
                ok = True
            except OSError as e:
                assert e.errno == errno.EINVAL
                ok = False
            assert ok == taken, (hdr_sz, hdr_len - n)
    finally:
        set_vnet_hdr_sz(pair.a.fd, VNET_HDR_SZ)
        pair.drain()
