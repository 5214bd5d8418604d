"""Benchmark of the RSC engine (csrc/vn_rsc.c): `python -m bench.rsc`.

Measures, in one run:
  1. segments per second coalesced in C on one core: a bulk TCP stream
     (1448-byte payloads) replayed through vn_rsc_push_batch, timed around
     the C call only (thread CPU time: the machine is shared; wall time is
     reported too); with checksums verified (payload copied and summed in
     one pass) and trusted (input header DATA_VALID: plain copy), with and
     without copying the outputs to an arena (what delivery to the guest
     costs on top);
  2. the kernel as the peer: the same stream written to a NAPI tap whose
     GRO coalesces it into a tap with TSO (tests/oracle/test_rsc_gro.py's
     rig), segments per second of system CPU time (GRO runs in the softirq
     of each write(2)) and of wall time; this path includes one write(2)
     per segment;
  3. guest RX packets per MB of bulk TCP, without RSC (one per segment), with
     the Coalescer (gso mode, default 300 us interval) at 10 and 1 Gbit/s
     arrival rates, and through Linux GRO.
Prints a table (tabulate) and writes bench/results/rsc.json.  Needs root
for part 2 (skipped with the reason otherwise).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

from tabulate import tabulate

from vmdnet._native import ffi, lib
from vmdnet.offload.rsc import Coalescer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rsc.json"
# The oracle rig and the stream builders live with the tests.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "oracle")]

from test_rsc_gro_streams import MSS, TCP_ACK, TCP_PSH, TcpFlow, parse_tcp  # noqa: E402

log = logging.getLogger("bench.rsc")

# Segments per replayed stream: 20 full units of 45 (about 1.3 MB, so the
# input stays in the last-level cache and the engine, not memory, is timed).
STREAM_SEGS = 45 * 20
# Replays per measurement and measurements (the best is reported).
REPLAYS = 60
ROUNDS = 5
# Segments written through the kernel (about 29 MB).
KERNEL_SEGS = 20_000
MB = 1 << 20
# Serialization time of a 1448-byte segment (1514-byte frame + preamble,
# IFG, FCS: 1538 bytes on the wire) at 10 and 1 Gbit/s, in ns.
WIRE_NS = {"10G": 1538 * 8 // 10, "1G": 1538 * 8}
# Bulk stream for the packets-per-MB figure (about 16 MB).
PPMB_SEGS = 11_600
TARGET_SEGS_PER_S = 5_000_000
TARGET_REDUCTION = 10


def bulk_stream(n: int, last_psh: bool = False) -> list[bytes]:
    flow = TcpFlow()
    segs = flow.data(n - 1) + flow.data(1, flags=TCP_ACK | (TCP_PSH if last_psh else 0))
    return segs


def _batch(frames: list[bytes], trusted: bool):
    ins = ffi.new("struct vn_rsc_batch_in[]", len(frames))
    keep = []
    for i, f in enumerate(frames):
        buf = ffi.from_buffer(f)
        keep.append(buf)
        ins[i].frame = buf
        ins[i].len = len(f)
        ins[i].has_hdr = int(trusted)
        ins[i].hdr.flags = lib.VN_HDR_F_DATA_VALID if trusted else 0
    return ins, keep


def c_rate(frames: list[bytes], trusted: bool, copy: bool) -> dict:
    """Segments per second through vn_rsc_push_batch (C time only, one core)."""
    co = Coalescer(interval_ns=10**12)
    ins, keep = _batch(frames, trusted)
    n = len(frames)
    outs = ffi.new("struct vn_rsc_out[]", 2 * n + 80)
    arena_cap = 2 * sum(len(f) for f in frames) + 80 * 65600
    arena = ffi.new("uint8_t[]", arena_cap) if copy else ffi.NULL
    consumed = ffi.new("uint32_t *")
    best = best_wall = float("inf")
    units = 0
    for _ in range(ROUNDS):
        t0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(REPLAYS):
            k = lib.vn_rsc_push_batch(co._r, ins, n, outs, 2 * n + 80, arena, arena_cap,
                                      consumed)
            assert k >= 0 and consumed[0] == n
            units = k
        best = min(best, time.thread_time() - t0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    del keep
    segs = n * REPLAYS
    st = co.stats
    assert st["rsc_coalesced"] >= segs * ROUNDS * 44 // 45, "the stream did not coalesce"
    return {"segs_per_s": segs / best, "ns_per_seg": best / segs * 1e9,
            "segs_per_s_wall": segs / best_wall,
            "gbit_per_s": segs * MSS * 8 / best / 1e9, "outputs_per_replay": units}


def packets_per_mb(frames: list[bytes], gap_ns: int | None) -> float:
    """Guest RX packets per MB of payload: each segment alone (gap None), or
    through a gso-mode Coalescer with segments arriving every `gap_ns`."""
    payload = sum(len(parse_tcp(f).payload) for f in frames)
    if gap_ns is None:
        return len(frames) / (payload / MB)
    co = Coalescer()
    out = co.push_batch(frames, [i * gap_ns for i in range(len(frames))]) + co.flush()
    return len(out) / (payload / MB)


def kernel_peer(frames: list[bytes]) -> dict:
    """The kernel's GRO (NAPI tap → bridge → TSO tap) on the same stream."""
    from test_rsc_gro import gro_rig, gro_rig_skip_reason

    reason = gro_rig_skip_reason()
    if reason:
        return {"skipped": reason}
    payload = sum(len(parse_tcp(f).payload) for f in frames)
    with gro_rig("rscbench") as rig:
        rig.drain()
        cpu0, t0 = os.times(), time.perf_counter()
        for f in frames:
            os.write(rig.b.fd, f)
        wall, cpu1 = time.perf_counter() - t0, os.times()
        out, got = [], 0
        while got < payload:
            item = rig._read_a(time.monotonic() + 5.0)
            if item is None:
                raise RuntimeError(f"GRO delivered {got} of {payload} payload bytes")
            p = parse_tcp(item[1])
            if p is not None:
                out.append(item)
                got += len(p.payload)
    sys_cpu = cpu1.system - cpu0.system
    return {"segs_per_s_wall": len(frames) / wall,
            "segs_per_s_sys_cpu": len(frames) / sys_cpu if sys_cpu > 0 else None,
            "packets": len(out), "packets_per_mb": len(out) / (payload / MB),
            "note": "one write(2) per segment; GRO runs inside it"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-kernel", action="store_true", help="skip the kernel peer")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stream = bulk_stream(STREAM_SEGS)
    res: dict = {"host": platform.node(), "kernel": platform.release(),
                 "python": platform.python_version(), "mss": MSS, "c": {}}
    for trusted in (False, True):
        for copy in (False, True):
            name = f"{'trusted' if trusted else 'verified'}{'+copy' if copy else ''}"
            res["c"][name] = c_rate(stream, trusted, copy)
    ppmb_stream = bulk_stream(PPMB_SEGS)
    res["packets_per_mb"] = {"no_rsc": packets_per_mb(ppmb_stream, None)}
    for rate, gap in WIRE_NS.items():
        res["packets_per_mb"][f"rsc_{rate}"] = packets_per_mb(ppmb_stream, gap)
    res["kernel"] = {"skipped": "--no-kernel"} if args.no_kernel else kernel_peer(
        bulk_stream(KERNEL_SEGS, last_psh=True))
    ppmb = res["packets_per_mb"]
    res["reduction_10G"] = ppmb["no_rsc"] / ppmb["rsc_10G"]
    res["targets"] = {
        "segs_per_s": TARGET_SEGS_PER_S,
        "segs_per_s_met": res["c"]["verified"]["segs_per_s"] >= TARGET_SEGS_PER_S,
        "reduction": TARGET_REDUCTION,
        "reduction_met": res["reduction_10G"] >= TARGET_REDUCTION,
    }
    print_table(res)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    log.info("wrote %s", RESULTS.relative_to(ROOT))
    return 0


def print_table(res: dict) -> None:
    rows = []
    for name, r in res["c"].items():
        rows.append([f"C vn_rsc_push_batch ({name})", f"{r['segs_per_s'] / 1e6:.2f} M",
                     f"{r['ns_per_seg']:.0f} ns/seg of CPU, {r['gbit_per_s']:.0f} Gbit/s "
                     f"payload; wall {r['segs_per_s_wall'] / 1e6:.2f} M/s"])
    k = res["kernel"]
    if "skipped" in k:
        rows.append(["kernel GRO (NAPI tap → bridge → tap)", "skipped", k["skipped"]])
    else:
        cpu = k["segs_per_s_sys_cpu"]
        rows.append(["kernel GRO (NAPI tap → bridge → tap)",
                     f"{cpu / 1e6:.2f} M" if cpu else "-",
                     f"of system CPU; wall {k['segs_per_s_wall'] / 1e6:.2f} M/s; {k['note']}"])
    print(tabulate(rows, headers=["segments coalesced (one core)", "per second", "notes"]))
    print()
    ppmb = res["packets_per_mb"]
    rows = [["no RSC (one packet per segment)", f"{ppmb['no_rsc']:.1f}", "1.0x"]]
    for key in ("rsc_10G", "rsc_1G"):
        rows.append([f"Coalescer gso mode, 300 us, {key[4:]} arrivals", f"{ppmb[key]:.1f}",
                     f"{ppmb['no_rsc'] / ppmb[key]:.1f}x fewer"])
    if "packets_per_mb" in k:
        rows.append(["Linux GRO (same stream, back to back)", f"{k['packets_per_mb']:.1f}",
                     f"{ppmb['no_rsc'] / k['packets_per_mb']:.1f}x fewer"])
    print(tabulate(rows, headers=["guest RX, bulk TCP", "packets per MB", "reduction"]))
    t = res["targets"]
    print(f"\ntargets: >= {t['segs_per_s'] / 1e6:.0f} M segments/s per core: "
          f"{'met' if t['segs_per_s_met'] else 'NOT met'}; >= {t['reduction']}x fewer "
          f"packets: {'met' if t['reduction_met'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
