"""TCP segment streams for the RSC tests: builders and the oracle's cases.

`TcpFlow` builds the segments of one TCP flow (IPv4 or IPv6, optional VLAN
tags) with every header field a test may vary; checksums are computed with
tests/pktlib.py's reference sum, independent of the C engine.  `CASES` are
the streams the Linux GRO oracle (test_rsc_gro.py) and the unit tests replay:
each is a list of frames in arrival order.  A case may carry `known_diff`,
the documented deliberate difference between vmdnet's Coalescer and Linux
GRO for that stream (see csrc/vn_rsc.c, "Theory of operation").

The tests here check the builders themselves against pktlib's reference.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pktlib as P

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
IPPROTO_TCP = 6
# A common Ethernet MSS: 1500 - 20 (IPv4) - 20 (TCP) - 12 (timestamps).
MSS = 1448
ETH_ZLEN = 60   # minimum Ethernet frame (without FCS): shorter ones get padding


def ts_option(tsval: int, tsecr: int) -> bytes:
    """NOP, NOP, timestamps (kind 8, length 10): the 12 bytes Linux sends."""
    return b"\x01\x01\x08\x0a" + struct.pack("!II", tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)


def sack_option(left: int, right: int) -> bytes:
    """NOP, NOP, one SACK block (kind 5, length 10)."""
    return b"\x01\x01\x05\x0a" + struct.pack("!II", left, right)


@dataclass
class TcpFlow:
    """One direction of a TCP connection; `seg()` builds its frames."""

    version: int = 4
    sport: int = 40000
    dport: int = 5201
    src_mac: bytes = P.MAC_A
    dst_mac: bytes = P.MAC_B
    src: str | None = None
    dst: str | None = None
    vlans: tuple[int, ...] = ()
    ident: int = 0x1000          # next IPv4 ID (incremented per segment)
    seq: int = 1_000_000         # next sequence number (advanced by data)

    def __post_init__(self) -> None:
        if self.src is None:
            self.src = P.IP4_A if self.version == 4 else P.IP6_A
        if self.dst is None:
            self.dst = P.IP4_B if self.version == 4 else P.IP6_B

    def seg(self, payload: bytes, *, seq: int | None = None, ack: int = 7_000_000,
            flags: int = TCP_ACK, window: int = 502, ident: int | None = None,
            ttl: int = 64, tos: int = 0, df: bool = True, opts: bytes = b"", urg: int = 0,
            flow_label: int = 0, pad: bool = True, bad_csum: bool = False,
            advance: bool = True, ip_options: bytes = b"") -> bytes:
        """The next segment (or the one at `seq`); IP ID and sequence advance."""
        s = self.seq if seq is None else seq
        if ident is None:
            ident = self.ident
            self.ident = (self.ident + 1) & 0xFFFF
        if advance and seq is None:
            self.seq = (self.seq + len(payload)) & 0xFFFFFFFF
        l4 = P.tcp(sport=self.sport, dport=self.dport, seq=s, ack=ack, flags=flags,
                   window=window, options=opts, urg=urg)
        l4len = len(l4) + len(payload)
        if self.version == 4:
            l3 = P.ipv4(IPPROTO_TCP, l4len, src=self.src, dst=self.dst, ident=ident, df=df,
                        ttl=ttl, tos=tos, options=ip_options)
            ph = P.pseudo_sum(4, l3[12:16], l3[16:20], IPPROTO_TCP, l4len)
            ethertype = 0x0800
        else:
            l3 = P.ipv6(IPPROTO_TCP, l4len, src=self.src, dst=self.dst, tc=tos, flow=flow_label,
                        hlim=ttl)
            ph = P.pseudo_sum(6, l3[8:24], l3[24:40], IPPROTO_TCP, l4len)
            ethertype = 0x86DD
        check = ~P.ref_checksum(l4 + payload, ph) & 0xFFFF
        if bad_csum:
            check ^= 0x5A5A
        l4 = l4[:16] + struct.pack("!H", check) + l4[18:]
        frame = P.eth(dst=self.dst_mac, src=self.src_mac, ethertype=ethertype,
                      vlans=self.vlans) + l3 + l4 + payload
        if pad and len(frame) < ETH_ZLEN:
            frame += b"\0" * (ETH_ZLEN - len(frame))
        return frame

    def data(self, n: int, size: int = MSS, **kw: object) -> list[bytes]:
        """`n` in-order data segments of `size` bytes with distinct payloads."""
        out = []
        for _ in range(n):
            tag = struct.pack("!I", self.seq)
            body = (tag * (size // 4 + 1))[:size]
            out.append(self.seg(body, **kw))  # type: ignore[arg-type]
        return out


# --- parsing what comes out (plain Python, for both sides of a comparison) ---

@dataclass(frozen=True)
class Parsed:
    """The fields of a TCP frame the comparisons look at."""

    version: int
    key: tuple              # (src, dst, sport, dport)
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    ip_id: int
    l3_off: int
    l4_off: int

    def checksums_ok(self, frame: bytes) -> bool:
        """IPv4 header and TCP checksums correct (pktlib's reference sum)."""
        return P.ref_l4_ok(frame, self.version, self.l3_off, self.l4_off, IPPROTO_TCP)


def parse_tcp(frame: bytes) -> Parsed | None:
    """Parse an Ethernet/VLAN/IP/TCP frame; None when it is something else."""
    off, et = 14, struct.unpack_from("!H", frame, 12)[0]
    while et in (0x8100, 0x88A8):
        et = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if et == 0x0800 and len(frame) >= off + 20 and frame[off + 9] == IPPROTO_TCP:
        ihl = (frame[off] & 0xF) * 4
        end = off + struct.unpack_from("!H", frame, off + 2)[0]
        src, dst = frame[off + 12:off + 16], frame[off + 16:off + 20]
        ip_id, version, l4 = struct.unpack_from("!H", frame, off + 4)[0], 4, off + ihl
    elif et == 0x86DD and len(frame) >= off + 40 and frame[off + 6] == IPPROTO_TCP:
        end = off + 40 + struct.unpack_from("!H", frame, off + 4)[0]
        src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
        ip_id, version, l4 = 0, 6, off + 40
    else:
        return None
    sport, dport, seq, ack, doff, flags, window = struct.unpack_from("!HHIIBBH", frame, l4)
    pay = l4 + (doff >> 4) * 4
    return Parsed(version, (src, dst, sport, dport), seq, ack, flags, window,
                  bytes(frame[pay:end]), ip_id, off, l4)


def groups(frames: list[bytes]) -> dict[tuple, list[tuple[int, bytes, int]]]:
    """Per flow, the delivered packets as (seq, payload, flags), in order."""
    out: dict[tuple, list[tuple[int, bytes, int]]] = {}
    for f in frames:
        p = parse_tcp(f)
        if p is not None:
            out.setdefault(p.key, []).append((p.seq, p.payload, p.flags))
    return out


def addr(version: int, text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# --- the oracle's cases -------------------------------------------------------

@dataclass
class Case:
    """A stream of frames in arrival order, and what is known to differ from GRO."""

    name: str
    frames: list[bytes]
    # Maps vmdnet's per-flow groups to what Linux GRO produces, for the
    # deliberate differences (None: none).
    known_diff: Callable[[list[tuple[int, bytes, int]]], list[tuple[int, bytes, int]]] | None = None
    gso_roundtrip: bool = True   # write our GSO output back: segments == input?
    flows: int = 1
    notes: str = ""
    tags: list[str] = field(default_factory=list)


def merge_fin_into_previous(gs: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes, int]]:
    """GRO appends an in-order FIN segment to the unit before it; vmdnet sends
    the FIN segment alone after the unit (QEMU's rule, the issue's rule)."""
    out: list[tuple[int, bytes, int]] = []
    for seq, pay, flags in gs:
        if (flags & TCP_FIN and out and out[-1][0] + len(out[-1][1]) == seq
                and not out[-1][2] & (TCP_PSH | TCP_FIN) and pay):
            pseq, ppay, pflags = out[-1]
            out[-1] = (pseq, ppay + pay, pflags | (flags & (TCP_FIN | TCP_PSH)))
        else:
            out.append((seq, pay, flags))
    return out


def merge_ece_runs(gs: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes, int]]:
    """GRO coalesces consecutive in-order ECE segments with each other;
    vmdnet delivers each ECE segment alone (QEMU's rule, the issue's rule)."""
    out: list[tuple[int, bytes, int]] = []
    for seq, pay, flags in gs:
        if (flags & TCP_ECE and out and out[-1][2] & TCP_ECE and pay
                and out[-1][0] + len(out[-1][1]) == seq and not out[-1][2] & TCP_PSH):
            pseq, ppay, pflags = out[-1]
            out[-1] = (pseq, ppay + pay, pflags | (flags & TCP_PSH))
        else:
            out.append((seq, pay, flags))
    return out


def _bulk(version: int, n: int) -> list[bytes]:
    return TcpFlow(version=version).data(n)


def _reorder() -> list[bytes]:
    f = TcpFlow()
    segs = f.data(20)
    return segs[:10] + [segs[11], segs[10]] + segs[12:]


def _retransmit() -> list[bytes]:
    f = TcpFlow()
    segs = f.data(20)
    return segs[:10] + [segs[5]] + segs[10:]


def _dup_acks() -> list[bytes]:
    f = TcpFlow()
    return f.data(5) + [f.seg(b"") for _ in range(3)] + f.data(5)


def _window_change() -> list[bytes]:
    f = TcpFlow()
    return f.data(6) + f.data(6, window=900) + [f.seg(b"", window=1200)] + f.data(4, window=1200)


def _ack_change() -> list[bytes]:
    f = TcpFlow()
    return f.data(6) + f.data(6, ack=7_001_000)


def _flag_mid(flag: int) -> Callable[[], list[bytes]]:
    def build() -> list[bytes]:
        f = TcpFlow()
        return f.data(7) + f.data(1, flags=TCP_ACK | flag) + f.data(7)
    return build


def _fin_end() -> list[bytes]:
    f = TcpFlow()
    return f.data(9) + f.data(1, size=500, flags=TCP_ACK | TCP_FIN | TCP_PSH)


def _ece_run() -> list[bytes]:
    f = TcpFlow()
    return f.data(4) + f.data(3, flags=TCP_ACK | TCP_ECE) + f.data(4)


def _rst() -> list[bytes]:
    f = TcpFlow()
    return f.data(6) + [f.seg(b"", flags=TCP_RST | TCP_ACK)]


def _timestamps_same() -> list[bytes]:
    f = TcpFlow()
    return f.data(30, size=MSS - 12, opts=ts_option(1000, 2000))


def _timestamps_changing() -> list[bytes]:
    f = TcpFlow()
    out: list[bytes] = []
    for i in range(12):
        out += f.data(1, size=MSS - 12, opts=ts_option(1000 + i // 3, 2000))
    return out


def _sack_change() -> list[bytes]:
    f = TcpFlow()
    return (f.data(4, size=MSS - 12, opts=sack_option(1, 2))
            + f.data(4, size=MSS - 12, opts=sack_option(1, 3)))


def _interleaved(version: int) -> list[bytes]:
    flows = [TcpFlow(version=version, sport=41000 + i) for i in range(3)]
    per = [fl.data(15) for fl in flows]
    return [per[i % 3][i // 3] for i in range(45)]


def _ttl_tos() -> list[bytes]:
    f = TcpFlow()
    return f.data(4) + f.data(4, ttl=63) + f.data(4, tos=0x10) + f.data(4, tos=0x12)


def _ipid_fixed() -> list[bytes]:
    f = TcpFlow()
    return [f.seg(s, ident=0x4242) for s in (b"a" * MSS, b"b" * MSS, b"c" * MSS, b"d" * 10)]


def _ipid_gap() -> list[bytes]:
    f = TcpFlow()
    segs = f.data(4)
    f.ident += 5
    return segs + f.data(4)


def _short_then_long() -> list[bytes]:
    f = TcpFlow()
    return f.data(3, size=1000) + f.data(3, size=1448) + f.data(2, size=700) + f.data(3)


def _bad_csum() -> list[bytes]:
    f = TcpFlow()
    segs = f.data(5)
    bad = f.data(1, bad_csum=True)
    return segs + bad + f.data(5)


def _small_padded() -> list[bytes]:
    f = TcpFlow()
    return f.data(4, size=4) + f.data(5) + f.data(2, size=5)


def _psh_head() -> list[bytes]:
    f = TcpFlow()
    return f.data(1, flags=TCP_ACK | TCP_PSH) + f.data(5) + f.data(1, flags=TCP_ACK | TCP_PSH)


def _dup_acks_v6() -> list[bytes]:
    f = TcpFlow(version=6)
    return f.data(5) + [f.seg(b"") for _ in range(2)] + f.data(5)


def _no_df() -> list[bytes]:
    return TcpFlow().data(12, df=False)


def _fixed_id_no_df() -> list[bytes]:
    f = TcpFlow()
    return [f.seg(s, ident=0x4343, df=False) for s in (b"e" * MSS, b"f" * MSS, b"g" * MSS)]


def _udp_interleaved() -> list[bytes]:
    f = TcpFlow()
    udp = P.eth() + P.ipv4(17, 8 + 100) + P.udp(length=108) + bytes(100)
    segs = f.data(10)
    return segs[:3] + [udp] + segs[3:7] + [udp, udp] + segs[7:]


def _syn_mid() -> list[bytes]:
    f = TcpFlow()
    return f.data(5) + [f.seg(b"", flags=TCP_SYN, advance=False)] + f.data(5)


def _ip_options_mid() -> list[bytes]:
    f = TcpFlow()
    nop4 = b"\x01\x01\x01\x00"          # three NOPs and an end of list
    return f.data(5) + f.data(1, ip_options=nop4) + f.data(5)


def _window_every_seg() -> list[bytes]:
    f = TcpFlow()
    out: list[bytes] = []
    for i in range(6):
        out += f.data(1, window=500 + i)
    return out


def _vlan() -> list[bytes]:
    return TcpFlow(vlans=(100,)).data(20)


def _flow_label() -> list[bytes]:
    f = TcpFlow(version=6)
    return f.data(5, flow_label=0x12345) + f.data(5, flow_label=0x12345)


def _ipv6_mixed() -> list[bytes]:
    f = TcpFlow(version=6)
    return f.data(8) + f.data(1, flags=TCP_ACK | TCP_PSH) + f.data(6, tos=0x20) + f.data(3)


CASES: list[Case] = [
    Case("bulk_v4", _bulk(4, 100)),
    Case("bulk_v6", _bulk(6, 100)),
    Case("reorder", _reorder()),
    Case("retransmit", _retransmit()),
    Case("dup_acks", _dup_acks()),
    Case("window_change", _window_change()),
    Case("ack_change", _ack_change()),
    Case("psh_mid", _flag_mid(TCP_PSH)()),
    Case("psh_head", _psh_head()),
    Case("urg_mid", _flag_mid(TCP_URG)()),
    Case("cwr_mid", _flag_mid(TCP_CWR)()),
    Case("ece_mid", _flag_mid(TCP_ECE)()),
    Case("ece_run", _ece_run(), known_diff=merge_ece_runs),
    Case("fin_end", _fin_end(), known_diff=merge_fin_into_previous),
    Case("rst", _rst()),
    Case("timestamps_same", _timestamps_same()),
    Case("timestamps_changing", _timestamps_changing()),
    Case("sack_change", _sack_change()),
    Case("interleaved_v4", _interleaved(4), flows=3),
    Case("interleaved_v6", _interleaved(6), flows=3),
    Case("ttl_tos", _ttl_tos()),
    Case("ipid_fixed", _ipid_fixed(),
         notes="GRO merges fixed IDs, then re-segments before a tap without "
               "TSO_MANGLEID; vmdnet's gso mode does not merge them"),
    Case("ipid_gap", _ipid_gap()),
    Case("short_then_long", _short_then_long()),
    Case("bad_csum", _bad_csum(), gso_roundtrip=True),
    Case("small_padded", _small_padded()),
    Case("vlan", _vlan(), tags=["vlan"]),
    Case("dup_acks_v6", _dup_acks_v6()),
    Case("no_df", _no_df()),
    Case("fixed_id_no_df", _fixed_id_no_df()),
    Case("udp_interleaved", _udp_interleaved()),
    Case("syn_mid", _syn_mid()),
    Case("ip_options_mid", _ip_options_mid()),
    Case("window_every_seg", _window_every_seg()),
    Case("flow_label_v6", _flow_label()),
    Case("ipv6_mixed", _ipv6_mixed()),
]


def case(name: str) -> Case:
    """A fresh copy of the case called `name`."""
    for c in CASES:
        if c.name == name:
            return replace(c, frames=list(c.frames))
    raise KeyError(name)


# --- checks of the builders themselves ---------------------------------------

def test_segments_checksum_and_parse() -> None:
    """Every built segment has correct IPv4 and TCP checksums (reference sum)
    except those built bad on purpose, and parses back to its fields."""
    for c in CASES:
        for frame in c.frames:
            p = parse_tcp(frame)
            if p is None:
                assert c.name == "udp_interleaved", c.name
                continue
            assert p.checksums_ok(frame) or c.name == "bad_csum", c.name


def test_flow_advances() -> None:
    f = TcpFlow()
    a, b = f.data(2, size=100)
    pa, pb = parse_tcp(a), parse_tcp(b)
    assert pa and pb and pb.seq == pa.seq + 100 and pb.ip_id == pa.ip_id + 1
    assert len(f.seg(b"")) == ETH_ZLEN      # padded to the Ethernet minimum
