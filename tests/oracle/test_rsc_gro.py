"""Linux GRO as the oracle for the RSC engine (vmdnet.offload.rsc, csrc/vn_rsc.c).

The rig, in a namespace the test creates: tap B opened with IFF_NAPI (its
gro_flush_timeout set, so GRO holds packets between writes) and tap A with
IFF_VNET_HDR and TUNSETOFFLOAD CSUM|TSO4|TSO6, both on one bridge (bridge
netfilter off, IPv6 off, nothing addressed).  Each case's segments are
written to tap B one by one; what tap A's reader gets is what Linux GRO made
of them.  The same segments go through a gso-mode Coalescer; per flow, the
packets must carry the same payload bytes in the same groups, apart from the
deliberate differences each case names (`known_diff`, see csrc/vn_rsc.c).
Packets that exist on both sides are compared byte for byte, virtio_net_hdr
included (except hdr_len: the kernel reports its linear head length there).

Then every coalesced GSO packet of ours is written into the issue-2 tap pair
(tests/netns.py: vnet-hdr tap → bridge → tap with offload 0): the kernel must
accept it and segment it back into exactly the segments that went in.

GRO's grouping also depends on time: a unit older than one jiffy is flushed
at the next NAPI completion, so a case whose writes straddle a jiffy tick
comes out split.  A case that disagrees is therefore run again (up to
ATTEMPTS times); a real difference in the rules disagrees every time.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pktlib as P
import pytest
from netns import SYSCTLS_BRIDGE_NF, SYSCTLS_IPV6_OFF, NetNS, TapPair, root_skip_reason
from pyroute2 import IPRoute
from test_rsc_gro_streams import CASES, MSS, Case, groups, parse_tcp

from vmdnet.offload import VnetHdr
from vmdnet.offload.rsc import Coalescer, OutKind
from vmdnet.tun import Tap, TunF, open_tap, set_offload

log = logging.getLogger(__name__)

# How long tap B's NAPI context keeps GRO packets after its last poll: far
# above the gap between two writes from Python (a few microseconds), so that
# only the jiffy-age rule can cut a unit short.
GRO_FLUSH_TIMEOUT_NS = 10_000_000
# Runs of a case before a disagreement counts (see the module docstring).
ATTEMPTS = 5
# Bounds on waiting for the kernel: a whole case, and stragglers after it.
COLLECT_TIMEOUT = 3.0
STRAGGLER_WAIT = 0.03
READY_TIMEOUT = 10.0
VNET_HDR_SZ = 12
READ_MAX = 65536 + VNET_HDR_SZ + 64
# A non-IP EtherType for readiness probes (IEEE 802 local experimental 2).
PROBE_ETHERTYPE = 0x88B6
P_DATA_VALID = 2  # VIRTIO_NET_HDR_F_DATA_VALID
# gso_size, gso_type, flags and csum fields compared; hdr_len is a hint.
HDR_FIELDS = ("flags", "gso_type", "gso_size", "csum_start", "csum_offset")


@dataclass
class GroRig:
    """Tap B (IFF_NAPI, writes) → bridge → tap A (vnet hdr + TSO, reads)."""

    ns: NetNS
    b: Tap
    a: Tap

    def drain(self) -> None:
        for tap in (self.a, self.b):
            while True:
                try:
                    os.read(tap.fd, READ_MAX)
                except BlockingIOError:
                    break

    def _read_a(self, deadline: float) -> tuple[VnetHdr, bytes] | None:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.a.fd], [], [], left)[0]:
                return None
            try:
                raw = os.read(self.a.fd, READ_MAX)
            except BlockingIOError:
                continue
            return VnetHdr.unpack(raw, VNET_HDR_SZ), raw[VNET_HDR_SZ:]
        return None

    def wait_ready(self) -> None:
        probe = P.eth(src=P.MAC_A, ethertype=PROBE_ETHERTYPE) + bytes(46)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.drain()
            os.write(self.b.fd, probe)
            got = self._read_a(time.monotonic() + 0.1)
            if got and got[1] == probe:
                return
        raise RuntimeError("GRO rig bridge did not forward")

    def run(self, frames: list[bytes]) -> list[tuple[VnetHdr, bytes]]:
        """Write `frames` to tap B; return what tap A's reader gets for them."""
        want_bytes = sum(len(p.payload) for p in map(parse_tcp, frames) if p)
        want_empty = sum(1 for p in map(parse_tcp, frames) if p and not p.payload)
        self.drain()
        for f in frames:
            os.write(self.b.fd, f)
        out: list[tuple[VnetHdr, bytes]] = []
        got_bytes = got_empty = 0
        deadline = time.monotonic() + COLLECT_TIMEOUT
        while got_bytes < want_bytes or got_empty < want_empty:
            item = self._read_a(deadline)
            if item is None:
                raise AssertionError(f"kernel gave {got_bytes}/{want_bytes} payload bytes, "
                                     f"{got_empty}/{want_empty} empty segments")
            p = parse_tcp(item[1])
            if p is None or item[1][6:12] != P.MAC_A:
                continue
            out.append(item)
            got_bytes += len(p.payload)
            got_empty += not p.payload
        while (item := self._read_a(time.monotonic() + STRAGGLER_WAIT)) is not None:
            if parse_tcp(item[1]) is not None and item[1][6:12] == P.MAC_A:
                out.append(item)
        return out


def _ip_netns_exec(ns: NetNS, script: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns.name, "sh", "-c", script], check=True,
                          capture_output=True, text=True, timeout=30).stdout


def _build(ns: NetNS) -> GroRig:
    for key, value in SYSCTLS_IPV6_OFF:
        ns.sysctl(key, value)
    for key, value in SYSCTLS_BRIDGE_NF:
        ns.sysctl(key, value, missing_ok=True)
    with ns.entered():
        b = open_tap("vnB", vnet_hdr=False, napi=True, nonblock=True)
        a = open_tap("vnA", vnet_hdr_sz=VNET_HDR_SZ, nonblock=True)
        rig = GroRig(ns, b, a)
        set_offload(a.fd, TunF.CSUM | TunF.TSO4 | TunF.TSO6)
        with IPRoute() as ipr:
            ipr.link("add", ifname="vnbr0", kind="bridge", br_stp_state=0)
            br = ipr.link_lookup(ifname="vnbr0")[0]
            for tap in (a, b):
                idx = ipr.link_lookup(ifname=tap.name)[0]
                ipr.link("set", index=idx, master=br)
                ipr.link("set", index=idx, state="up")
            ipr.link("set", index=br, state="up")
    # sysfs shows the namespace it was mounted in: `ip netns exec` remounts it.
    got = _ip_netns_exec(ns, f"echo {GRO_FLUSH_TIMEOUT_NS} > /sys/class/net/vnB/gro_flush_timeout"
                             " && cat /sys/class/net/vnB/gro_flush_timeout")
    assert int(got) == GRO_FLUSH_TIMEOUT_NS
    return rig


def gro_rig_skip_reason() -> str | None:
    """Why the GRO rig cannot be built here, or None."""
    reason = root_skip_reason()
    if reason is None and shutil.which("ip") is None:
        reason = "ip(8) (iproute2) is needed to write sysfs inside the namespace"
    return reason


@contextmanager
def gro_rig(purpose: str = "rscgro") -> Iterator[GroRig]:
    """The GRO rig in a fresh namespace; taps and namespace removed afterwards
    (also used by bench/rsc.py for the kernel's rate)."""
    ns = NetNS(purpose)
    rig = None
    try:
        rig = _build(ns)
        rig.wait_ready()
        yield rig
    finally:
        if rig is not None:
            rig.a.close()
            rig.b.close()
        ns.close()


@pytest.fixture(scope="module")
def gro() -> Iterator[GroRig]:
    reason = gro_rig_skip_reason()
    if reason:
        pytest.skip(reason)
    with gro_rig() as rig:
        yield rig


def ours(frames: list[bytes]) -> tuple[list[tuple[VnetHdr, bytes]], list[OutKind]]:
    """The gso-mode Coalescer's output for `frames` arriving at once, then held
    units flushed (GRO's timer flush at the end of the case)."""
    co = Coalescer(interval_ns=10**12, mode="gso")
    out = co.push_batch(frames, 0)
    kinds = co.last_kinds
    out += co.flush()
    return out, kinds + co.last_kinds


def kernel_has_vlan_gro() -> bool:
    """Does this kernel's GRO parse VLAN tags (CONFIG_VLAN_8021Q's vlan_gro_receive)?"""
    with open("/proc/kallsyms") as f:
        return any(line.rstrip().endswith(" vlan_gro_receive") for line in f)


def split_all(gs: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes, int]]:
    """What a kernel without VLAN GRO delivers for a tagged flow: every segment
    alone, as received (vmdnet coalesces tagged flows, as a kernel with
    CONFIG_VLAN_8021Q does)."""
    out = []
    for seq, pay, flags in gs:
        while pay:
            out.append((seq, pay[:MSS], flags))
            seq, pay = seq + MSS, pay[MSS:]
    return out


def with_kernel_diffs(case: Case) -> Case:
    if case.tags and "vlan" in case.tags and not kernel_has_vlan_gro():
        return replace(case, known_diff=split_all)
    return case


def expected_groups(case: Case, out: list[tuple[VnetHdr, bytes]]) -> dict:
    g = groups([f for _, f in out])
    if case.known_diff:
        g = {k: case.known_diff(v) for k, v in g.items()}
    return g


def _describe(g: dict) -> list:
    return [[(seq, len(pay), flags) for seq, pay, flags in v] for v in g.values()]


def kernel_matching(gro: GroRig, case: Case, want: dict) -> list[tuple[VnetHdr, bytes]]:
    """Run the case through GRO until its groups equal `want` (ATTEMPTS runs)."""
    seen = []
    for attempt in range(ATTEMPTS):
        got = gro.run(case.frames)
        kg = groups([f for _, f in got])
        if kg == want:
            log.info("%s: GRO agrees on attempt %d", case.name, attempt + 1)
            return got
        seen.append(_describe(kg))
        time.sleep(0.01)
    raise AssertionError(f"{case.name}: GRO groups {seen[-1]} != vmdnet's {_describe(want)} "
                         f"in {ATTEMPTS} runs (all runs: {seen})")


def compare_bytes(case: Case, ours_out: list, kernel_out: list) -> dict[str, int]:
    """Packets present on both sides, byte for byte; returns counts by kind."""
    kernel: dict[tuple, list] = {}
    for hdr, f in kernel_out:
        p = parse_tcp(f)
        kernel.setdefault((p.key, p.seq, p.payload), []).append((hdr, f))
    counts = {"identical": 0, "kernel_resegmented": 0, "known_diff": 0, "data_valid_extra": 0}
    for hdr, f in ours_out:
        p = parse_tcp(f)
        if p is None:
            continue            # not TCP: bypassed, and not collected from GRO
        if not kernel.get((p.key, p.seq, p.payload)):
            assert case.known_diff, f"{case.name}: seq {p.seq} missing from GRO's output"
            counts["known_diff"] += 1
            continue
        khdr, kf = kernel[(p.key, p.seq, p.payload)].pop(0)
        if not hdr.gso_type and khdr.flags & P.F_NEEDS_CSUM:
            # GRO merged it, then the tap (no TSO_MANGLEID) re-segmented it:
            # the kernel's copy carries a partial checksum; payload agreed.
            counts["kernel_resegmented"] += 1
            continue
        assert kf == f, f"{case.name}: seq {p.seq}: frame differs from GRO's"
        if hdr.gso_type or khdr.gso_type:
            for name in HDR_FIELDS:
                assert getattr(hdr, name) == getattr(khdr, name), (case.name, p.seq, name)
        elif hdr.flags != khdr.flags:
            # GRO skips checksum validation of a packet it flushes at the IP
            # layer (Ethernet padding): no DATA_VALID there; vmdnet verified it.
            assert (hdr.flags, khdr.flags) == (P_DATA_VALID, 0), (case.name, p.seq, hdr, khdr)
            counts["data_valid_extra"] += 1
        counts["identical"] += 1
    return counts


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_groups_as_gro(gro: GroRig, case: Case) -> None:
    case = with_kernel_diffs(case)
    out, _ = ours(case.frames)
    want = expected_groups(case, out)
    kernel_out = kernel_matching(gro, case, want)
    counts = compare_bytes(case, out, kernel_out)
    log.info("%s: %s", case.name, counts)
    tcp_out = sum(1 for _, f in out if parse_tcp(f) is not None)
    assert counts["identical"] + counts["kernel_resegmented"] + counts["known_diff"] == tcp_out
    if not case.known_diff:
        assert counts["known_diff"] == 0


def _inputs_of(case: Case, key: tuple, seq: int, length: int) -> list[bytes]:
    """The good input segments of flow `key` that, in arrival order, fill
    [seq, seq + length) exactly (a retransmitted copy is not one of them)."""
    out, want = [], seq
    for f in case.frames:
        p = parse_tcp(f)
        if (p is not None and p.key == key and p.payload and p.seq == want
                and want < seq + length and p.checksums_ok(f)):
            out.append(f)
            want += len(p.payload)
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.gso_roundtrip],
                         ids=[c.name for c in CASES if c.gso_roundtrip])
def test_every_output_is_accepted_and_segments_back(pair: TapPair, case: Case) -> None:
    """Each output, written to a vnet-hdr tap, comes out of the offload-0 tap
    as exactly what went in: a coalesced packet as the segments that were
    coalesced, anything else as itself."""
    out, kinds = ours(case.frames)
    units = 0
    for (hdr, frame), kind in zip(out, kinds, strict=True):
        got = pair.kernel_segment(hdr, frame)
        if not hdr.gso_type:
            assert got == [frame], (case.name, kind)
            continue
        assert kind == OutKind.UNIT
        p = parse_tcp(frame)
        assert got == _inputs_of(case, p.key, p.seq, len(p.payload)), (case.name, p.seq)
        units += 1
    if case.name.startswith("bulk"):
        assert units == 3


def test_timestamps_same_is_one_unit_unlike_qemu() -> None:
    """Better than QEMU (which refuses any TCP option): equal timestamps coalesce."""
    out, _ = ours(next(c for c in CASES if c.name == "timestamps_same").frames)
    assert len(out) == 1 and out[0][0].gso_type == P.GSO_TCPV4
