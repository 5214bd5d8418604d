"""Offload engine benchmark: `python -m bench.offload` (wired to `make bench`).

Measured in one run, on the same buffers:
  - memcpy of 64 KiB and 1500 B (cffi's ffi.memmove: one C call, as the others);
  - checksum (vn_csum_partial) of 64 KiB and 1500 B, on the path this CPU picks
    (AVX2 when present) and on the SSE2/scalar fallback;
  - software GSO of 64 KiB TCPv4, TCPv6 and USO super-packets: copy mode
    (vn_segment into a preallocated arena) and iovec mode (vn_segment_iov);
  - the pure-Python reference checksum (tests/pktlib.ref_checksum);
  - the Python overhead of one batch call: FixBatch.run() on one tiny frame,
    minus the C time per frame (the slope between 1- and 64-frame batches);
  - the kernel as the peer: 64 KiB super-packets written to tap A
    (IFF_VNET_HDR) bridged to tap B (no offloads) in a network namespace of our
    own (tests/netns.py, ``vn-bench-<pid>-<n>``, removed afterwards), tap B
    drained meanwhile by a forked reader; the kernel segments and checksums
    inside write(), so payload bytes written per second is its segmentation
    rate (best 50 ms window).  Then the same without a reader ("unread": the
    kernel segments, then drops at tap B's full queue), which leaves the
    second core to the writer.

A C rate is the best of many short timing windows, each many back-to-back
calls of one function (driven from C by itertools, not a Python loop): the
machine is shared, and the best window is the one nothing interrupted.  Rates
count input bytes; the cffi call overhead is included (and reported).
Nothing here is asserted by tests; targets are printed with pass/miss.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import os
import platform
import select
import signal
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from vmdnet._native import ffi, lib
from vmdnet.offload import FixBatch, VnetHdr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import pktlib as P  # noqa: E402  (tests/ is not a package)

log = logging.getLogger("bench.offload")

RESULTS = ROOT / "bench" / "results" / "offload.json"
BIG = 65536             # a 64 KiB super-packet, and the memcpy it is compared with
SMALL = 1500            # one MTU-sized packet
# Timing: windows of about WINDOW_S each, for BUDGET_S per measurement (at least
# MIN_WINDOWS).  Short windows are rarely preempted on a busy 2-core machine.
WINDOW_S = 200e-6
BUDGET_S = 0.6
MIN_WINDOWS = 5
ROUNDS = 4
# Segment sizes: what Linux guests use on a 1500-byte MTU.
MSS = {"TCPv4": 1448, "TCPv6": 1428, "USO": 1472}
# Batch-overhead measurement: frames in the large batch, and the tiny frame's payload.
SLOPE_FRAMES = 64
TINY_PAYLOAD = 18
# Kernel peer: seconds of writing per kind, and how long the reader may lag at the end.
KERNEL_S = 1.5
KERNEL_DRAIN_S = 0.2
KERNEL_WINDOW_S = 0.05  # the kernel rate is the best window of this length, as for C
READER_POLL_S = 0.05    # the tap B reader's longest sleep in select()
READER_EXIT_S = 5.0     # how long past its deadline the reader may take to report
VNET_HDR_SZ = 12        # the oracle taps' header size (tests/netns.py)
READ_MAX = 65536 + VNET_HDR_SZ + 64
# Targets (issue 2): ratios to memcpy of the same bytes, and microseconds.
TARGET_CSUM = 0.6
TARGET_SEGMENT = 0.5
TARGET_BATCH_US = 2.0


@dataclass
class Timing:
    """Seconds per call: the best window and the median window."""

    best: float
    median: float
    calls_per_window: int
    windows: int


@dataclass
class Row:
    """One line of the table (and of the JSON)."""

    name: str
    size: str
    value: float                # GB/s, or microseconds for the overhead row
    unit: str
    vs_memcpy: float | None = None
    target: str = ""
    verdict: str = ""
    median: float | None = None


@dataclass
class Probe:
    """One C call to time: func(*args), with the checksum path it needs."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    nbytes: int = 0
    simd: bool = True
    timings: list[Timing] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(t.best for t in self.timings)

    @property
    def median(self) -> float:
        return statistics.median(t.median for t in self.timings)

    def gbps(self) -> tuple[float, float]:
        return self.nbytes / self.best / 1e9, self.nbytes / self.median / 1e9


def time_calls(func: Callable[..., Any], args: Sequence[Any],
               budget: float = BUDGET_S) -> Timing:
    """Best and median seconds per func(*args), over many short windows."""
    def window(calls: int) -> float:
        it = itertools.starmap(func, itertools.repeat(tuple(args), calls))
        t0 = time.perf_counter_ns()
        collections.deque(it, maxlen=0)          # calls func from C, no bytecode per call
        return (time.perf_counter_ns() - t0) / 1e9

    calls = 1
    while window(calls) < WINDOW_S and calls < 1 << 20:
        calls *= 2
    samples: list[float] = []
    end = time.perf_counter() + budget
    while time.perf_counter() < end or len(samples) < MIN_WINDOWS:
        samples.append(window(calls) / calls)
    return Timing(min(samples), statistics.median(samples), calls, len(samples))


def run_probes(probes: Sequence[Probe], rounds: int = ROUNDS) -> None:
    """Time every probe in turn, `rounds` times over: a busy spell on the shared
    machine then costs each measurement one round, not all of them."""
    for _ in range(rounds):
        for p in probes:
            lib.vn_csum_select(1 if p.simd else 0)
            p.timings.append(time_calls(p.func, p.args, BUDGET_S / rounds))
    lib.vn_csum_select(1)


def verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


# --- frames --------------------------------------------------------------------------

def super_packet(kind: str, total: int = BIG, src_mac: bytes = P.MAC_A) -> tuple[VnetHdr, bytes]:
    """A guest-style GSO super-packet of exactly `total` bytes."""
    version = 6 if kind == "TCPv6" else 4
    proto = P.IPPROTO_UDP if kind == "USO" else P.IPPROTO_TCP
    head = 14 + (40 if version == 6 else 20) + (8 if proto == P.IPPROTO_UDP else 20)
    payload = os.urandom(total - head)
    b = P.l4_frame(version, proto, payload)
    gso = {"TCPv4": P.GSO_TCPV4, "TCPv6": P.GSO_TCPV6, "USO": P.GSO_UDP_L4}[kind]
    frame = P.eth(src=src_mac, ethertype=0x86DD if version == 6 else 0x0800) + b.frame[14:]
    return VnetHdr(**b.hdr_fields(gso, MSS[kind])), frame


def c_hdr(h: VnetHdr) -> Any:
    ch = ffi.new("struct vn_net_hdr *")
    for name in ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset"):
        setattr(ch, name, getattr(h, name))
    return ch


# --- measurements ------------------------------------------------------------------------

class Buffers:
    """Preallocated C buffers shared by every measurement."""

    def __init__(self) -> None:
        self.src = ffi.new("uint8_t[]", BIG)
        self.dst = ffi.new("uint8_t[]", BIG)
        ffi.memmove(self.src, os.urandom(BIG), BIG)
        self.arena_cap = 1 << 20
        self.arena = ffi.new("uint8_t[]", self.arena_cap)
        self.max_segs = 4096
        self.lens = ffi.new("uint32_t[]", self.max_segs)
        # cffi does not know struct iovec's size: two pointers' worth each.  The
        # cast does not own its memory: keep the allocation alive beside it.
        self._iov_mem = ffi.new("char[]", 2 * self.max_segs * 2 * ffi.sizeof("void *"))
        self.iov = ffi.cast("struct iovec *", self._iov_mem)
        self.keep: list[object] = []     # frames and headers the probes point into


def c_probes(buf: Buffers, simd: bool) -> dict[str, Probe]:
    """Every C call the table reports, keyed by what it measures."""
    probes = {f"memcpy {n}": Probe(ffi.memmove, (buf.dst, buf.src, n), n) for n in (BIG, SMALL)}
    for path in ("simd", "sse2") if simd else ("sse2",):
        for n in (BIG, SMALL):
            probes[f"csum {path} {n}"] = Probe(lib.vn_csum_partial, (buf.src, n, 0), n,
                                               simd=path == "simd")
    for kind in MSS:
        hdr, frame = super_packet(kind)
        h, f = c_hdr(hdr), ffi.from_buffer(frame)
        buf.keep += [h, f, frame]
        fid = 0x1234
        copy = (h, f, len(frame), fid, buf.arena, buf.arena_cap, buf.lens, buf.max_segs)
        iov = (h, f, len(frame), fid, buf.arena, buf.arena_cap, buf.iov, buf.max_segs)
        nsegs = lib.vn_segment(*copy)
        if nsegs <= 1 or lib.vn_segment_iov(*iov) != nsegs:
            raise RuntimeError(f"{kind}: vn_segment gave {nsegs} segments")
        probes[f"seg {kind} copy {nsegs}"] = Probe(lib.vn_segment, copy, len(frame))
        probes[f"seg {kind} iovec {nsegs}"] = Probe(lib.vn_segment_iov, iov, len(frame))
    # The cffi call alone, included in every rate (reported, not subtracted).
    probes["call memmove"] = Probe(ffi.memmove, (buf.dst, buf.src, 0))
    probes["call csum"] = Probe(lib.vn_csum_partial, (buf.src, 0, 0))
    return probes


def c_rows(probes: dict[str, Probe], simd: bool) -> list[Row]:
    memcpy = {n: probes[f"memcpy {n}"].gbps()[0] for n in (BIG, SMALL)}
    rows = [Row("memcpy", fmt_size(n), memcpy[n], "GB/s", 1.0, median=probes[f"memcpy {n}"]
                .gbps()[1]) for n in (BIG, SMALL)]
    for path in ("simd", "sse2") if simd else ("sse2",):
        label = "AVX2" if path == "simd" else "SSE2/scalar"
        for n in (BIG, SMALL):
            best, med = probes[f"csum {path} {n}"].gbps()
            ratio = best / memcpy[n]
            main = n == BIG and (path == "simd" or not simd)
            rows.append(Row(f"checksum ({label})", fmt_size(n), best, "GB/s", ratio,
                            f">= {TARGET_CSUM}x memcpy" if main else "",
                            verdict(ratio >= TARGET_CSUM) if main else "", med))
    for key, p in probes.items():
        if not key.startswith("seg "):
            continue
        _, kind, mode, nsegs = key.split()
        best, med = p.gbps()
        ratio = best / memcpy[BIG]
        rows.append(Row(f"segment {kind} ({mode}, {nsegs} segs)", fmt_size(p.nbytes), best,
                        "GB/s", ratio, f">= {TARGET_SEGMENT}x memcpy",
                        verdict(ratio >= TARGET_SEGMENT), med))
    return rows


def measure_ref_checksum(memcpy_big: float) -> Row:
    data = os.urandom(BIG)
    t = time_calls(P.ref_checksum, (data,), budget=0.5)
    best, med = BIG / t.best / 1e9, BIG / t.median / 1e9
    return Row("checksum (pure Python reference)", fmt_size(BIG), best, "GB/s",
               best / memcpy_big, median=med)


def tiny_frame() -> tuple[VnetHdr, bytes]:
    b = P.l4_frame(4, P.IPPROTO_UDP, bytes(TINY_PAYLOAD))
    return VnetHdr(**b.hdr_fields()), b.frame


def measure_batch_overhead() -> tuple[Row, dict[str, float]]:
    """Python cost of one FixBatch.run() call beyond the C work it triggers."""
    hdr, frame = tiny_frame()
    fb = FixBatch(max_frames=SLOPE_FRAMES, arena=1 << 20, max_segs=4 * SLOPE_FRAMES)
    for i in range(SLOPE_FRAMES):
        fb.set(i, hdr, frame)
    def c_args(n: int) -> tuple[Any, ...]:
        return (fb.ents, n, 1, fb.arena, fb.arena_cap, fb.seg_lens, fb.max_segs)

    run1 = Probe(fb.run, (1,))
    c1 = Probe(lib.vn_fix_batch, c_args(1))
    c64 = Probe(lib.vn_fix_batch, c_args(SLOPE_FRAMES))
    run_probes([run1, c1, c64])
    per_frame = (c64.best - c1.best) / (SLOPE_FRAMES - 1)
    overhead_us = (run1.best - per_frame) * 1e6
    detail = {"fixbatch_run_1_us": run1.best * 1e6, "c_call_1_frame_us": c1.best * 1e6,
              "c_per_frame_us": per_frame * 1e6,
              "cffi_call_overhead_us": (c1.best - per_frame) * 1e6}
    row = Row("Python overhead per batch call", "1 frame", overhead_us, "us", None,
              f"<= {TARGET_BATCH_US} us", verdict(overhead_us <= TARGET_BATCH_US),
              (run1.median - per_frame) * 1e6)
    return row, detail


# --- the kernel as the peer -----------------------------------------------------------------

def _drain_tap_b(fd: int, src_mac: bytes, deadline: float) -> tuple[int, int]:
    """Read tap B until `deadline` (monotonic); (frames, bytes) from `src_mac`.
    Sleeps in select() when the queue is empty rather than spinning: the
    machine has two cores and the writer needs one (a spinning reader measured
    lower kernel rates here, not higher)."""
    frames = nbytes = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return frames, nbytes
        ready, _, _ = select.select([fd], [], [], min(left, READER_POLL_S))
        while ready:
            try:
                pkt = os.read(fd, READ_MAX)
            except BlockingIOError:
                break
            if pkt[VNET_HDR_SZ + 6:VNET_HDR_SZ + 12] == src_mac:
                frames += 1
                nbytes += len(pkt) - VNET_HDR_SZ


class TapBReader:
    """A forked child that drains tap B until a deadline (a thread would share
    the GIL with the writer and measure Python, not the kernel).  Waited for by
    PID; killed by PID only if it does not report in time."""

    def __init__(self, fd: int, src_mac: bytes, seconds: float):
        self.deadline = time.monotonic() + seconds
        self._res_r, res_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:                                    # the child
            counts = (0, 0)
            try:
                counts = _drain_tap_b(fd, src_mac, self.deadline)
            finally:
                os.write(res_w, struct.pack("=QQ", *counts))
                os._exit(0)
        os.close(res_w)

    def finish(self) -> tuple[int, int]:
        """Wait for the child's report; (frames, bytes) it read."""
        wait = max(0.0, self.deadline - time.monotonic()) + READER_EXIT_S
        try:
            ready, _, _ = select.select([self._res_r], [], [], wait)
            raw = os.read(self._res_r, 16) if ready else b""
        finally:
            os.close(self._res_r)
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        if len(raw) != 16:
            raise RuntimeError("tap B reader did not report")
        frames, nbytes = struct.unpack("=QQ", raw)
        return frames, nbytes


@dataclass
class Writes:
    """What write_for() did: totals, and the best window's writes per second."""

    writes: int
    errors: int
    seconds: float
    best_per_s: float


def write_for(fd: int, data: bytes, seconds: float) -> Writes:
    """Write `data` to `fd` for `seconds`, counted in KERNEL_WINDOW_S windows."""
    writes = errors = 0
    best = 0.0
    t0 = time.perf_counter()
    end = t0 + seconds
    while (w0 := time.perf_counter()) < end:
        n = 0
        while time.perf_counter() - w0 < KERNEL_WINDOW_S:
            try:
                os.write(fd, data)
                n += 1
            except OSError as exc:
                errors += 1
                log.debug("tap A write: %s", exc)
        best = max(best, n / (time.perf_counter() - w0))
        writes += n
    return Writes(writes, errors, time.perf_counter() - t0, best)


def kernel_rate(kind: str, seconds: float) -> dict[str, Any]:
    """Write `kind` super-packets to tap A for `seconds` while tap B is read,
    then half as long unread; what the kernel did."""
    import netns  # tests/netns.py: namespace, bridge and tap pair (needs root)

    reason = netns.root_skip_reason()
    if reason:
        return {"skipped": reason}
    with netns.tap_pair("bench") as pair:
        ns_name = pair.ns.name
        mac = pair.next_mac()
        hdr, frame = super_packet(kind, src_mac=mac)
        data = hdr.pack(VNET_HDR_SZ) + frame
        payload = len(frame) - hdr.hdr_len
        reader = TapBReader(pair.b.fd, mac, seconds + KERNEL_DRAIN_S)
        try:
            read = write_for(pair.a.fd, data, seconds)
        finally:
            frames, nbytes = reader.finish()
        unread = write_for(pair.a.fd, data, seconds / 2)
        pair.drain()
    return {
        "netns": ns_name, "writes": read.writes, "write_errors": read.errors + unread.errors,
        "seconds": read.seconds, "segments_read": frames,
        "segments_expected": read.writes * -(-payload // MSS[kind]),
        "segmented_gbps": read.best_per_s * payload / 1e9,
        "segmented_gbps_mean": read.writes * payload / read.seconds / 1e9,
        "delivered_gbps_mean": (nbytes - frames * hdr.hdr_len) / read.seconds / 1e9,
        "segmented_gbps_unread": unread.best_per_s * payload / 1e9,
        "window_s": KERNEL_WINDOW_S,
    }


def measure_kernel(seconds: float, memcpy_big: float, ours: dict[str, float]) -> tuple[
        list[Row], dict[str, Any]]:
    rows, detail = [], {}
    for kind in MSS:
        try:
            res = kernel_rate(kind, seconds)
        except (OSError, RuntimeError) as exc:      # netns.OracleError is a RuntimeError
            res = {"skipped": f"{type(exc).__name__}: {exc}"}
        detail[kind] = res
        if "skipped" in res:
            log.warning("kernel %s: skipped (%s)", kind, res["skipped"])
            rows.append(Row(f"kernel GSO {kind} (tap A -> bridge -> tap B)", fmt_size(BIG),
                            float("nan"), "GB/s", None, "", f"skipped: {res['skipped']}"))
            continue
        rate = res["segmented_gbps"]
        rows.append(Row(f"kernel GSO {kind} (tap A -> bridge -> tap B)", fmt_size(BIG),
                        rate, "GB/s payload", rate / memcpy_big,
                        f"unread: {res['segmented_gbps_unread']:.2f} GB/s; "
                        f"ours (copy) {ours[kind] / rate:.0f}x", "peer"))
    return rows, detail


# --- report -------------------------------------------------------------------------------------

def fmt_size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


def table(rows: list[Row]) -> str:
    def value(r: Row) -> str:
        if r.value != r.value:                      # NaN: not measured
            return "-"
        return f"{r.value:.3f} {r.unit}" if r.value < 1 else f"{r.value:.1f} {r.unit}"

    body = [[r.name, r.size, value(r),
             "" if r.vs_memcpy is None else f"{r.vs_memcpy:.2f}", r.target, r.verdict]
            for r in rows]
    return tabulate(body, headers=["measurement", "size", "rate", "x memcpy", "target",
                                   "result"], disable_numparse=True)


def environment() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    simd = bool(lib.vn_csum_select(1))
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "csum_path": "AVX2" if simd else "SSE2/scalar",
            "loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run(kernel_seconds: float, out: Path) -> int:
    env = environment()
    simd = env["csum_path"] == "AVX2"
    buf = Buffers()
    probes = c_probes(buf, simd)
    log.info("timing %d C calls, %d rounds of %.2f s each", len(probes), ROUNDS,
             BUDGET_S / ROUNDS)
    run_probes(list(probes.values()))
    rows = c_rows(probes, simd)
    memcpy_big = rows[0].value
    rows.append(measure_ref_checksum(memcpy_big))
    batch_row, batch_detail = measure_batch_overhead()
    rows.append(batch_row)
    calls = {"memmove_0_bytes_ns": probes["call memmove"].best * 1e9,
             "csum_0_bytes_ns": probes["call csum"].best * 1e9}
    ours = {kind: next(r.value for r in rows if r.name.startswith(f"segment {kind} (copy"))
            for kind in MSS}
    kernel_detail: dict[str, Any] = {}
    if kernel_seconds > 0:
        krows, kernel_detail = measure_kernel(kernel_seconds, memcpy_big, ours)
        rows += krows
    sys.stdout.write(table(rows) + "\n")
    sys.stdout.write(f"cffi call overhead (included above): memmove "
                     f"{calls['memmove_0_bytes_ns']:.0f} ns, vn_csum_partial "
                     f"{calls['csum_0_bytes_ns']:.0f} ns; load average "
                     f"{env['loadavg'][0]:.2f} at start\n")
    sys.stdout.flush()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "rows": [_no_nan(asdict(r)) for r in rows],
              "call_overhead": calls, "batch_overhead": batch_detail,
              "kernel": kernel_detail,
              "timing": {"window_s": WINDOW_S, "budget_s": BUDGET_S, "rounds": ROUNDS},
              "targets": {"checksum_vs_memcpy": TARGET_CSUM,
                          "segment_vs_memcpy": TARGET_SEGMENT,
                          "batch_overhead_us": TARGET_BATCH_US}}
    out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", out)
    return 0


def _no_nan(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a value that was not measured is null."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.offload", description=__doc__.split("\n")[0])
    ap.add_argument("--kernel-seconds", type=float, default=KERNEL_S,
                    help="seconds of writing per kind to the kernel peer (0: skip it)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON output file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(name)s: %(message)s")
    return run(args.kernel_seconds, args.out)


if __name__ == "__main__":
    sys.exit(main())
