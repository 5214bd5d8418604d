"""vionet against its C peers, side by side in one run: `python -m bench.vionet` (make bench).

Three comparisons, each printed as a table and written to bench/results/vionet.json:

1. **vionet vs Open vSwitch with DPDK** (OVS 3.1: a ``dpdkvhostuserclient``
   port and a ``tap`` port with ``userspace-tso-enable=true``, joined by two
   OpenFlow rules so OVS does no MAC learning or flooding; its non-PMD
   threads are unpinned, see unpin_ovs_threads).  The guest is DPDK's
   virtio_user (tests/dpdklib.py); each backend's tap lives in the namespace
   ``vn-bench-<pid>`` we create (198.18.0.0/15 only).  Frames: 64 B and
   1514 B (UDP from testpmd's ``txonly``) and 64 KiB TCP super-packets with
   TSO over IPv4 and IPv6 (pcap + ``csum`` engine).  Both directions:
     * guest TX: virtio_user -> backend -> tap, counted by the tap's kernel
       rx counters;
     * guest RX: frames injected into the tap by a paced AF_PACKET sender
       (``sendmmsg`` through ctypes, one call per batch, in a child process;
       GSO super-packets carry a virtio_net_hdr via PACKET_VNET_HDR) ->
       backend -> virtio_user ``rxonly`` (with tcp_lro, so GUEST_TSO4/6 are
       negotiated), counted by testpmd's RX counters.
   Targets: TSO >= 1.0x OVS's Gbit/s; 64 B and 1514 B >= 0.8x OVS's pps.
2. **Raw ring speed**: vionet ``--discard`` vs DPDK's ``net_vhost`` in
   ``rxonly``, virtio_user ``txonly`` 64 B in front of both, counted by the
   guest's TX counter (what the backend took off the ring), alternated over
   a few rounds.  Target >= 0.25x.
3. **A real guest**: the test guest (QEMU 7.2/TCG, tests/guestlib.py) runs
   iperf3 against the guest's own iperf3 binary run on the host side, through
   vionet and through QEMU's own tap backend (``vhost=off``; ``vectors=0``
   like the vhost-user device, MSI-X shown for information), both
   directions; all guests boot at once and their runs alternate.  Target
   >= 0.95x each way.

Nothing is asserted: targets print pass/miss.  What cannot run here (no
OVS-DPDK, no QEMU, a start-up failure) is reported with its reason in place
of a number.  The machine has 2 shared cores: each rate is the best of
several short windows (medians kept), the load average is recorded before
and after each part, and every result carries the CPU share each busy
thread ran and waited for (schedstat), so starvation shows (see NOTES).
Everything started here (testpmd, ovs-vswitchd/ovsdb-server, QEMU, vionet,
iperf3, the injector) is stopped by PID; the namespace, hugepage mount and
hugepage reservation are undone at exit, also on SIGTERM.  ``--quick``
shortens every window and runs each comparison once (about 2 minutes in all
instead of about 7).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import errno
import itertools
import json
import logging
import os
import platform
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench import dpdk_common as dc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import dpdklib  # noqa: E402  (tests/ is not a package)
import guestlib  # noqa: E402
import pktlib  # noqa: E402

log = logging.getLogger("bench.vionet")

RESULTS = ROOT / "bench" / "results" / "vionet.json"
NETNS_PREFIX = "vn-bench-"
# Tap names (IFNAMSIZ 16): vionet's for part 1, for --discard, for the guest; QEMU's tap.
VIONET_TAP, DISCARD_TAP = "vnbv0", "vnbd0"
GUEST_VIONET_TAP, GUEST_QEMU_TAP, GUEST_MSIX_TAP = "vnbg0", "vnbq0", "vnbm0"
# Part 3 addresses (198.18.0.0/15 only): one /24 per guest (host side .1, guest .2).
GUEST_NETS = {"vionet": ("198.18.2.1", "198.18.2.2"), "QEMU tap": ("198.18.3.1", "198.18.3.2"),
              "QEMU tap (MSI-X)": ("198.18.4.1", "198.18.4.2")}
IPERF_PORT = 5201


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long each measurement runs: a warm-up (rings fill, renegotiation
    settles), then `windows` consecutive counted windows of `window_s` wall
    time each.  The headline is the best window (the one the other users of
    the 2 shared cores disturbed least, as bench.offload does), the median
    goes to the JSON.  iperf3 runs `iperf_s` seconds; its best 1 s interval
    is the headline, the whole-run mean is kept too."""

    warmup_s: float
    window_s: float
    windows: int
    iperf_s: int
    # Part 1 alternates vionet and OVS this many times (best of each).
    part1_rounds: int
    # Part 2 alternates vionet and net_vhost this many times (best of each).
    ring_rounds: int
    # Part 3 alternates the guests this many times (best interval of all rounds).
    guest_rounds: int
    # Part 3 also measures QEMU's tap backend with MSI-X (informational).
    tap_msix: bool


FULL = Timing(warmup_s=1.0, window_s=0.5, windows=6, iperf_s=5, part1_rounds=2, ring_rounds=2,
              guest_rounds=3, tap_msix=True)
QUICK = Timing(warmup_s=0.5, window_s=0.4, windows=3, iperf_s=3, part1_rounds=1, ring_rounds=1,
               guest_rounds=1, tap_msix=False)

# Parts 1 and 2: where the backend's data path runs.  The guest's testpmd
# busy-polls on CPU 0 (its forwarding lcore); OVS's PMD thread and net_vhost's
# forwarding lcore are pinned to CPU 1, so vionet is pinned there too (like for
# like; --no-pin leaves it to the scheduler).  Part 3 pins nothing.
BACKEND_CPUS = {1}
# vionet creates its tap and socket within a second; a loaded machine gets margin.
VIONET_START_TIMEOUT = 30.0
STATS_TIMEOUT = 10.0
# virtio_user's link after connecting (OVS retries its connect once a second).
LINK_TIMEOUT = 30.0
# The injector prints "ready" once its socket is bound; python start-up on a
# loaded machine takes a second or two.
INJECT_READY_TIMEOUT = 30.0
INJECT_EXIT_TIMEOUT = 10.0
# Guest RX: when the tap dropped less than this fraction of what its reader
# took, the backend kept up with the injector and the rate is a lower bound.
SENDER_BOUND_DROPS = 0.05
# Threads that ran less than this share of a CPU are left out of the report.
SCHED_MIN_SHARE = 0.05
# Until traffic flows after forwarding starts (see wait_flowing), polled this often.
FLOW_TIMEOUT = 30.0
FLOW_POLL_S = 0.2
# A guest iperf3 run: its duration plus connect retries and start-up under TCG.
IPERF_SLACK_S = 60
IPERF_RETRIES = 5
# iperf3's last interval may be a fraction of a second: only whole ones count.
IPERF_FULL_INTERVAL_S = 0.9

# Segment sizes a Linux guest uses on a 1500-byte MTU: IPv4 1448, IPv6 1428
# (both with TCP timestamps).
MSS_V4, MSS_V6 = 1448, 1428
TSO_SEGMENTS = dpdklib.TSO_SEGMENTS

# Targets (ratio vionet / peer): from the project brief.
TARGET_TSO_GBPS = 1.0
TARGET_SMALL_PPS = 0.8
TARGET_RING_PPS = 0.25
TARGET_GUEST = 0.95


# --- the cases of part 1 ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One traffic kind of part 1, and what it is judged by."""

    name: str
    kind: str          # injector kind: "64", "1514", "tso4", "tso6"
    frame_len: int     # bytes per frame (super-packet) on the wire, no vnet header
    metric: str        # "pps" or "gbps": what the target compares
    target: float
    # The injector's pace for guest RX (frames/s): above what either backend
    # took in trial runs here, so the backend is the bottleneck, but bounded so
    # the sender does not spin on a core the backends need.
    offered_pps: int

    @property
    def tso(self) -> bool:
        return self.kind.startswith("tso")

    @property
    def v6(self) -> bool:
        return self.kind == "tso6"

    @property
    def mss(self) -> int:
        return MSS_V6 if self.v6 else MSS_V4


def _tso_len(v6: bool) -> int:
    hdrs = dpdklib.ETH_HLEN + (dpdklib.IP6_HLEN if v6 else dpdklib.IP4_HLEN) + dpdklib.TCP_HLEN
    return hdrs + (MSS_V6 if v6 else MSS_V4) * TSO_SEGMENTS


CASES = (
    Case("64 B", "64", 64, "pps", TARGET_SMALL_PPS, 1_500_000),
    Case("1514 B", "1514", 1514, "pps", TARGET_SMALL_PPS, 800_000),
    Case("TSO IPv4 64 KiB", "tso4", _tso_len(False), "gbps", TARGET_TSO_GBPS, 40_000),
    Case("TSO IPv6 64 KiB", "tso6", _tso_len(True), "gbps", TARGET_TSO_GBPS, 40_000),
)
CASE_BY_KIND = {c.kind: c for c in CASES}


def tx_frame(case: Case) -> bytes:
    """What the guest sends for a TSO case: one TCP super-frame (MAC_A -> MAC_B)."""
    return dpdklib.tcp_superframe(case.mss, TSO_SEGMENTS, v6=case.v6)


# --- results --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    """One backend's number for one case and direction, or why there is none."""

    part: int
    case: str
    direction: str
    backend: str
    pps: float | None = None
    gbps: float | None = None
    error: str | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        return self.pps if metric == "pps" else self.gbps


def rate(packets: int, nbytes: int, seconds: float) -> tuple[float, float]:
    """(packets/s, Gbit/s of frame bytes) over `seconds`."""
    return packets / seconds, nbytes * 8 / seconds / 1e9


def fmt_pps(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} Mpps" if v >= 1e5 else f"{v / 1e3:.1f} kpps"


def fmt_gbps(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def short_error(exc: BaseException) -> str:
    """The first line of an exception, for a table cell (the JSON keeps it whole)."""
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:160]


@dataclasses.dataclass
class Verdict:
    """vionet / peer for one case and direction, against its target."""

    part: int
    case: str
    direction: str
    metric: str
    ratio: float | None
    target: float
    verdict: str  # "pass", "miss" or "n/a (why)"


def judge(part: int, case: str, direction: str, metric: str, target: float,
          ours: Result, peer: Result) -> Verdict:
    a, b = ours.value(metric), peer.value(metric)
    if a is None or b is None or b <= 0:
        why = "not measured" if a is None or b is None else "no traffic through the peer"
        return Verdict(part, case, direction, metric, None, target, f"n/a ({why})")
    ratio = a / b
    return Verdict(part, case, direction, metric, ratio, target,
                   "pass" if ratio >= target else "miss")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- processes we start ---------------------------------------------------------------------------

class VionetProc:
    """vmdnet-vionet listening on a socket, owning a tap in our namespace; stopped by PID."""

    def __init__(self, ns: guestlib.GuestNetns, workdir: Path, tap: str, *extra: str,
                 cpus: set[int] | None = None) -> None:
        self.tap = tap
        self.sock = workdir / f"{tap}.sock"
        self.stats_path = workdir / f"{tap}-stats.json"
        self.log_path = workdir / f"{tap}-vionet.log"
        for p in (self.sock, self.stats_path):
            p.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "vmdnet.vionet.main", "--socket", str(self.sock),
                "--tap", tap, "--stats-json", str(self.stats_path), *extra]
        with open(self.log_path, "wb") as out:
            self.proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            self._wait_socket()
            if cpus:  # queue threads start at connect time and inherit it
                for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                    os.sched_setaffinity(int(tid), cpus)
            ns.run(["ip", "link", "set", tap, "up"])
        except BaseException:
            self.close()
            raise

    def _wait_socket(self) -> None:
        deadline = time.monotonic() + VIONET_START_TIMEOUT
        while not self.sock.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"vionet exited ({self.proc.returncode}): "
                                   f"{self.log_path.read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("vionet never created its socket")
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        """Its counters (SIGUSR1 makes it write the JSON)."""
        self.stats_path.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + STATS_TIMEOUT
        while not self.stats_path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("vionet wrote no statistics")
            time.sleep(0.05)
        return json.loads(self.stats_path.read_text())

    def close(self) -> None:
        guestlib.stop_process(self.proc)


@dataclasses.dataclass
class Backend:
    """Where the guest connects and where the backend's tap is."""

    name: str
    sock: Path
    server: bool  # virtio_user listens (OVS is the vhost-user client)
    tap: str
    vionet: VionetProc | None = None
    ovs: dc.OvsDpdk | None = None

    def counters(self) -> dict[str, int]:
        """The backend's own counters (flattened), for what it dropped in a window."""
        try:
            if self.vionet is not None:
                return flatten(self.vionet.stats(), ("tx", "rx"))
            if self.ovs is not None:
                return {f"{port}.{k}": v for port in (dc.VHOST_PORT, dc.TAP_PORT)
                        for k, v in ovs_statistics(self.ovs, port).items()}
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
            log.warning("%s counters: %s", self.name, e)
        return {}


    def pids(self) -> dict[str, int]:
        """The backend's processes, for per-thread CPU accounting."""
        if self.vionet is not None:
            return {"vionet": self.vionet.proc.pid}
        if self.ovs is not None:
            return {"ovs": next(p.pid for n, p in self.ovs._procs if n == "ovs-vswitchd")}
        return {}


SchedSample = dict[str, tuple[int, int]]


def sched_sample(pids: dict[str, int]) -> tuple[float, SchedSample]:
    """Per thread: ns on a CPU and ns runnable but waiting for one (schedstat)."""
    out: SchedSample = {}
    for label, pid in pids.items():
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    task = Path(f"/proc/{pid}/task/{tid}")
                    comm = (task / "comm").read_text().strip()
                    run, wait = (task / "schedstat").read_text().split()[:2]
                    out[f"{label}:{comm}:{tid}"] = (int(run), int(wait))
    return time.monotonic(), out


def sched_report(a: tuple[float, SchedSample], b: tuple[float, SchedSample]) -> dict[str, Any]:
    """Each busy thread's share of one CPU over the span, on it and waiting for it:
    a thread that waits a lot was starved by the other users of the machine."""
    secs = b[0] - a[0]
    out = {}
    for k, (run, wait) in b[1].items():
        run0, wait0 = a[1].get(k, (0, 0))
        cpu, runq = (run - run0) / 1e9 / secs, (wait - wait0) / 1e9 / secs
        if cpu >= SCHED_MIN_SHARE:
            out[k] = {"cpu": round(cpu, 2), "runq_wait": round(runq, 2)}
    return out


def flatten(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, int]:
    """Integer leaves under `keys` of a nested dict, as dotted names."""
    out: dict[str, int] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}", sub)
        elif isinstance(v, int) and not isinstance(v, bool):
            out[prefix] = v

    for k in keys:
        walk(k, d.get(k, {}))
    return out


_DUMP_PORT_RE = re.compile(r"port\s+\"?([\w.-]+)\"?:\s+rx (.*?)\n\s+tx (.*?)(?:\n|$)")
_KV_RE = re.compile(r"(\w+)=(\d+)")


def ovs_statistics(ovs: dc.OvsDpdk, port: str) -> dict[str, int]:
    """A port's live counters from ``ovs-ofctl dump-ports`` (the database's
    Interface statistics are refreshed only every 5 s)."""
    out = ovs_ofctl(ovs, "--names", "dump-ports", dc.BRIDGE, port)
    for name, rx, tx in _DUMP_PORT_RE.findall(out):
        if name == port:
            return {**{f"rx_{k}": int(v) for k, v in _KV_RE.findall(rx)},
                    **{f"tx_{k}": int(v) for k, v in _KV_RE.findall(tx)}}
    raise ValueError(f"no counters for {port} in: {out}")


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What moved between two samples, restricted to drop/error/retry counters."""
    return {k: after[k] - before.get(k, 0) for k in after
            if after[k] != before.get(k, 0)
            and any(w in k for w in ("drop", "err", "retr", "discard", "bad", "no_buf"))}


@contextlib.contextmanager
def virtio_user(backend: Backend, log_dir: Path) -> Iterator[dpdklib.TestPmd]:
    """A testpmd whose only port is virtio_user on the backend's socket, link up.

    Forwarding lcore 0, command line on lcore 1.  In server mode EAL's probe
    waits until the backend (OVS, already running) connects.
    """
    vdev = dpdklib.virtio_user_vdev(backend.sock, server=backend.server)
    pmd = dpdklib.TestPmd([vdev], tag="vu", main_lcore=1, log_dir=log_dir)
    try:
        pmd.link_up(dpdklib.VU_PORT, LINK_TIMEOUT)
        yield pmd
    finally:
        pmd.close()


# --- guest TX: virtio_user -> backend -> tap ------------------------------------------------------

def tap_counters(ns: guestlib.GuestNetns, tap: str) -> dict[str, int]:
    return dc.tap_counters(ns.name, tap)


def wait_flowing(counter: Callable[[], int], timeout: float = FLOW_TIMEOUT) -> float:
    """Wait until `counter` moves (the backend set its rings up and takes traffic);
    returns how long that took.  On a loaded machine OVS's main thread needed
    several seconds after the connect before its PMD thread polled the port."""
    t0 = time.monotonic()
    first = counter()
    while counter() == first:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"no traffic within {timeout:.0f} s")
        time.sleep(FLOW_POLL_S)
    return time.monotonic() - t0


Counters = dict[str, int]


def _stamp(read: Callable[[], Counters]) -> tuple[float, Counters]:
    """Counters with the time they were read (the middle of a slow read)."""
    t0 = time.monotonic()
    values = read()
    return (t0 + time.monotonic()) / 2, values


def measure(read: Callable[[], Counters], packets: str, nbytes: str, metric: str,
            timing: Timing) -> tuple[float, float, dict[str, Any]]:
    """(pps, Gbit/s) of the best of `timing.windows` windows by `metric`, and a
    detail dict: per-window rates, medians, every counter's delta per second."""
    samples = [_stamp(read)]
    for _ in range(timing.windows):
        time.sleep(timing.window_s)
        samples.append(_stamp(read))
    rates = []
    for (t0, a), (t1, b) in itertools.pairwise(samples):
        rates.append(rate(b[packets] - a[packets], b[nbytes] - a[nbytes], t1 - t0))
    best = max(rates, key=lambda r: r[0] if metric == "pps" else r[1])
    (ta, first), (tb, last) = samples[0], samples[-1]
    span = tb - ta
    detail = {"windows_pps": [round(r[0]) for r in rates],
              "windows_gbps": [round(r[1], 3) for r in rates],
              "median_pps": round(sorted(r[0] for r in rates)[len(rates) // 2]),
              "median_gbps": round(sorted(r[1] for r in rates)[len(rates) // 2], 3),
              "span_s": round(span, 3),
              "per_s": {k: round((last[k] - first[k]) / span) for k in last}}
    return best[0], best[1], detail


def tx_counters(ns: guestlib.GuestNetns, backend: Backend,
                pmd: dpdklib.TestPmd) -> Callable[[], Counters]:
    """Guest TX: what reached the kernel through the tap, and what the guest queued."""
    def read() -> Counters:
        tap = tap_counters(ns, backend.tap)
        guest = pmd.port_stats(dpdklib.VU_PORT)
        return {"tap.rx_packets": tap["rx_packets"], "tap.rx_bytes": tap["rx_bytes"],
                "tap.rx_dropped": tap["rx_dropped"], "guest.tx_packets": guest.tx_packets}
    return read


def measure_tx(ns: guestlib.GuestNetns, backend: Backend, pmd: dpdklib.TestPmd,
               timing: Timing, metric: str) -> tuple[float, float, dict[str, Any]]:
    """Forwarding runs: once traffic flows and after the warm-up, the tap's rx counters."""
    settle = wait_flowing(lambda: pmd.port_stats(dpdklib.VU_PORT).tx_packets)
    time.sleep(timing.warmup_s)
    b0 = backend.counters()
    pids = {**backend.pids(), "guest": pmd.proc.pid}
    s0 = sched_sample(pids)
    pps, gbps, detail = measure(tx_counters(ns, backend, pmd), "tap.rx_packets",
                                "tap.rx_bytes", metric, timing)
    detail["threads"] = sched_report(s0, sched_sample(pids))
    detail.update(settle_s=round(settle, 1), backend_drops=counter_delta(b0, backend.counters()))
    return pps, gbps, detail


def guest_tx_small(ns: guestlib.GuestNetns, backend: Backend, timing: Timing,
                   log_dir: Path, cases: list[Case]) -> list[Result]:
    """64 B and 1514 B from testpmd's txonly engine (one testpmd for both sizes)."""
    results = []
    with virtio_user(backend, log_dir) as pmd:
        pmd.set_fwd("txonly")
        for case in cases:
            res = Result(1, case.name, "guest TX", backend.name)
            try:
                out = pmd.cmd(f"set txpkts {case.frame_len}")
                if "rror" in out or "nvalid" in out:
                    raise dpdklib.DpdkError(f"set txpkts {case.frame_len}: {out.strip()}")
                pmd.start()
                try:
                    res.pps, res.gbps, res.detail = measure_tx(ns, backend, pmd, timing,
                                                               case.metric)
                finally:
                    pmd.stop()
            except (dpdklib.DpdkError, RuntimeError, OSError, subprocess.SubprocessError) as e:
                res.error = short_error(e)
            results.append(res)
    return results


def guest_tx_tso(ns: guestlib.GuestNetns, backend: Backend, timing: Timing, log_dir: Path,
                 case: Case, work: Path) -> Result:
    """A 64 KiB TCP super-frame from a pcap, sent in a loop with TSO (csum engine)."""
    res = Result(1, case.name, "guest TX", backend.name)
    pcap = work / f"tx-{case.kind}.pcap"
    dpdklib.write_pcap(pcap, [tx_frame(case)])
    try:
        with dpdklib.VirtioUser(backend.sock, send_pcap=pcap, repeat=True, capture=False,
                                server=backend.server, tso_mss=case.mss,
                                mbuf_size=dpdklib.MAX_MBUF_SIZE, log_dir=log_dir) as vu:
            vu.link_up(LINK_TIMEOUT)
            vu.start()
            try:
                res.pps, res.gbps, res.detail = measure_tx(ns, backend, vu.pmd, timing,
                                                           case.metric)
            finally:
                vu.pmd.stop()
    except (dpdklib.DpdkError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        res.error = short_error(e)
    return res


# --- guest RX: injector -> tap -> backend -> virtio_user rxonly -----------------------------------

class Injector:
    """The paced AF_PACKET sender (this module's ``inject`` mode) in our namespace."""

    def __init__(self, ns: guestlib.GuestNetns, ifname: str, kind: str, pps: int,
                 max_seconds: float) -> None:
        argv = [sys.executable, "-m", "bench.vionet", "inject", "--ifname", ifname,
                "--kind", kind, "--pps", str(pps), "--seconds", f"{max_seconds:.1f}"]
        self.proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=ROOT)
        self._out = b""
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _read_some(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(self.proc.stdout.fileno(), 4096)
        self._out += chunk
        return bool(chunk)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + INJECT_READY_TIMEOUT
        while b"ready\n" not in self._out:
            if not self._read_some(0.1) or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"injector did not start: {self.stderr()}")

    def stderr(self) -> str:
        if self.proc.stderr is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-500:]

    def finish(self) -> dict[str, Any]:
        """SIGTERM it; its last stdout line is a JSON report of what it sent."""
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + INJECT_EXIT_TIMEOUT
        while self._read_some(0.1) and time.monotonic() < deadline:
            pass
        self.close()
        last = self._out.decode(errors="replace").strip().splitlines()[-1]
        return json.loads(last) if last.startswith("{") else {"error": self.stderr()}

    def close(self) -> None:
        guestlib.stop_process(self.proc)  # type: ignore[arg-type]
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def guest_rx(ns: guestlib.GuestNetns, backend: Backend, timing: Timing, log_dir: Path,
             cases: list[Case]) -> list[Result]:
    """Every case into one rxonly virtio_user (tcp_lro on: GUEST_TSO4/6 negotiated)."""
    results = []
    with virtio_user(backend, log_dir) as pmd:
        pmd.set_rx_offloads(dpdklib.VU_PORT, dpdklib.RX_OFFLOADS_ALL)
        pmd.link_up(dpdklib.VU_PORT, LINK_TIMEOUT)
        pmd.set_fwd("rxonly")
        pmd.start()
        for case in cases:
            results.append(guest_rx_case(ns, backend, timing, pmd, case))
        pmd.stop()
    return results


def rx_counters(ns: guestlib.GuestNetns, backend: Backend,
                pmd: dpdklib.TestPmd) -> Callable[[], Counters]:
    """Guest RX: what the guest received, and what its backend read from the tap."""
    def read() -> Counters:
        guest = pmd.port_stats(dpdklib.VU_PORT)
        tap = tap_counters(ns, backend.tap)
        return {"guest.rx_packets": guest.rx_packets, "guest.rx_bytes": guest.rx_bytes,
                "guest.rx_nombuf": guest.rx_nombuf, "tap.tx_packets": tap["tx_packets"],
                "tap.tx_dropped": tap["tx_dropped"]}
    return read


def guest_rx_case(ns: guestlib.GuestNetns, backend: Backend, timing: Timing,
                  pmd: dpdklib.TestPmd, case: Case) -> Result:
    """Inject `case` frames into the backend's tap; count what the guest receives."""
    res = Result(1, case.name, "guest RX", backend.name)
    span = timing.warmup_s + timing.window_s * timing.windows + INJECT_EXIT_TIMEOUT
    try:
        inj = Injector(ns, backend.tap, case.kind, case.offered_pps, span)
        try:
            settle = wait_flowing(lambda: pmd.port_stats(dpdklib.VU_PORT).rx_packets)
            time.sleep(timing.warmup_s)
            b0 = backend.counters()
            pids = {**backend.pids(), "guest": pmd.proc.pid, "injector": inj.proc.pid}
            s0 = sched_sample(pids)
            res.pps, res.gbps, res.detail = measure(rx_counters(ns, backend, pmd),
                                                    "guest.rx_packets", "guest.rx_bytes",
                                                    case.metric, timing)
            res.detail["threads"] = sched_report(s0, sched_sample(pids))
            res.detail["backend_drops"] = counter_delta(b0, backend.counters())
        finally:
            sent = inj.finish()
        res.detail.update(settle_s=round(settle, 1), offered_pps=case.offered_pps,
                          injected_pps=round(sent.get("sent", 0)
                                             / max(sent.get("seconds", 0), 1e-9)))
        per_s = res.detail["per_s"]
        # The tap dropped (almost) nothing: the backend took all it was offered.
        res.detail["sender_bound"] = (per_s["tap.tx_dropped"]
                                      < SENDER_BOUND_DROPS * max(per_s["tap.tx_packets"], 1))
    except (dpdklib.DpdkError, RuntimeError, OSError, subprocess.SubprocessError,
            ValueError) as e:
        res.error = short_error(e)
    return res


# --- part 1 per backend ---------------------------------------------------------------------------

def backend_cases(ns: guestlib.GuestNetns, backend: Backend, timing: Timing, work: Path,
                  log_dir: Path) -> list[Result]:
    """All of part 1 against one backend; a failing group is recorded, the rest goes on."""
    results: list[Result] = []
    small = [c for c in CASES if not c.tso]

    def attempt(group: list[Case], direction: str, fn: Callable[[], list[Result]]) -> None:
        try:
            results.extend(fn())
        except (dpdklib.DpdkError, RuntimeError, OSError, subprocess.SubprocessError) as e:
            log.warning("%s %s: %s", backend.name, direction, e)
            results.extend(Result(1, c.name, direction, backend.name, error=short_error(e))
                           for c in group)

    log.info("%s: guest TX 64 B / 1514 B", backend.name)
    attempt(small, "guest TX", lambda: guest_tx_small(ns, backend, timing, log_dir, small))
    for case in (c for c in CASES if c.tso):
        log.info("%s: guest TX %s", backend.name, case.name)
        results.append(guest_tx_tso(ns, backend, timing, log_dir, case, work))
    log.info("%s: guest RX", backend.name)
    attempt(list(CASES), "guest RX", lambda: guest_rx(ns, backend, timing, log_dir, list(CASES)))
    return results


def unavailable(backend: str, reason: str) -> list[Result]:
    return [Result(1, c.name, d, backend, error=reason)
            for d in ("guest TX", "guest RX") for c in CASES]


def part1_vionet(ns: guestlib.GuestNetns, timing: Timing, work: Path, log_dir: Path,
                 cpus: set[int] | None) -> list[Result]:
    try:
        v = VionetProc(ns, work, VIONET_TAP, cpus=cpus)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return unavailable("vionet", f"vionet did not start: {short_error(e)}")
    try:
        backend = Backend("vionet", v.sock, server=False, tap=VIONET_TAP, vionet=v)
        return backend_cases(ns, backend, timing, work, log_dir)
    finally:
        v.close()


def ovs_ofctl(ovs: dc.OvsDpdk, *args: str) -> str:
    """ovs-ofctl against our private ovs-vswitchd (its bridge socket is in its rundir)."""
    ofctl = shutil.which("ovs-ofctl")
    if ofctl is None:
        raise RuntimeError("ovs-ofctl not installed")
    return subprocess.run([ofctl, *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "OVS_RUNDIR": str(ovs.workdir)},
                          timeout=dc.VSCTL_TIMEOUT).stdout


def ovs_flows(ovs: dc.OvsDpdk) -> None:
    """Replace the NORMAL rule by two port-to-port rules: forwarding, not learning."""
    ovs_ofctl(ovs, "del-flows", dc.BRIDGE)
    for a, b in ((dc.VHOST_PORT, dc.TAP_PORT), (dc.TAP_PORT, dc.VHOST_PORT)):
        ovs_ofctl(ovs, "add-flow", dc.BRIDGE, f"in_port={a},actions=output:{b}")


def unpin_ovs_threads(ovs: dc.OvsDpdk) -> dict[str, list[int]]:
    """Let every ovs-vswitchd thread but the PMD threads run on any CPU.

    dpdk-lcore-mask=0x1 pins the main thread (and the threads it starts) to
    CPU 0, where the guest's testpmd busy-polls too.  OVS polls tap ports
    from that main thread, not from a PMD thread, so pinned it got half a CPU
    at best for the whole guest RX path (tap -> vhost).  vionet's threads are
    not pinned either.  Returns the CPU lists of the threads left pinned.
    """
    pid = next(p.pid for name, p in ovs._procs if name == "ovs-vswitchd")
    pinned: dict[str, list[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        if comm.startswith("pmd"):
            pinned[comm] = sorted(os.sched_getaffinity(int(tid)))
        else:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), range(os.cpu_count() or 1))
    return pinned


def part1_ovs(ns: guestlib.GuestNetns, timing: Timing, work: Path,
              log_dir: Path) -> list[Result]:
    reason = dc.ovs_dpdk_available()
    if reason:
        return unavailable("OVS-DPDK", reason)
    ovs_work = Path(tempfile.mkdtemp(prefix="ovs-", dir=work))  # one per start (rounds)
    with contextlib.ExitStack() as stack:
        try:
            huge = dc.Hugepages(ovs_work / "huge")
            stack.callback(huge.close)
            ovs = dc.OvsDpdk(ovs_work, ns.name, tso=True, huge_dir=huge.mountpoint)
            stack.callback(ovs.close)
            sock = ovs_work / "vhu0.sock"
            ovs.add_bridge(sock)
            ovs_flows(ovs)
            pmd_cpus = unpin_ovs_threads(ovs)
            log.info("OVS-DPDK up; PMD threads pinned: %s, other threads on any CPU",
                     pmd_cpus)
        except (RuntimeError, OSError, subprocess.SubprocessError, StopIteration) as e:
            return unavailable("OVS-DPDK", f"OVS-DPDK failed to start: {short_error(e)}")
        backend = Backend("OVS-DPDK", sock, server=True, tap=dc.TAP_PORT, ovs=ovs)
        return backend_cases(ns, backend, timing, work, log_dir)


# --- part 2: raw ring speed ----------------------------------------------------------------------

def ring_rate(backend: Backend, timing: Timing, log_dir: Path, round_no: int,
              pids: dict[str, int]) -> Result:
    """virtio_user txonly 64 B: the guest's TX counter (what the backend took off the ring)."""
    res = Result(2, "64 B", "guest TX", backend.name)
    with virtio_user(backend, log_dir) as pmd:
        pmd.cmd("set txpkts 64")
        pmd.set_fwd("txonly")
        pmd.start()
        wait_flowing(lambda: pmd.port_stats(dpdklib.VU_PORT).tx_packets)
        time.sleep(timing.warmup_s)

        def read() -> Counters:
            g = pmd.port_stats(dpdklib.VU_PORT)
            return {"guest.tx_packets": g.tx_packets, "guest.tx_bytes": g.tx_bytes}

        pids = {**pids, "guest": pmd.proc.pid}
        s0 = sched_sample(pids)
        res.pps, res.gbps, res.detail = measure(read, "guest.tx_packets", "guest.tx_bytes",
                                                "pps", timing)
        res.detail["threads"] = sched_report(s0, sched_sample(pids))
        pmd.stop()
    res.detail["round"] = round_no
    return res


def best_of(rounds: list[Result]) -> Result:
    """The round with the highest pps (errors only if every round failed)."""
    good = [r for r in rounds if r.error is None and r.pps is not None]
    if not good:
        return rounds[-1]
    best = max(good, key=lambda r: r.pps or 0.0)
    best.detail["rounds_pps"] = [None if r.pps is None else round(r.pps) for r in rounds]
    return best


def ring_vionet(ns: guestlib.GuestNetns, timing: Timing, work: Path, log_dir: Path,
                round_no: int, cpus: set[int] | None) -> Result:
    name = "vionet --discard"
    try:
        v = VionetProc(ns, work, DISCARD_TAP, "--discard", cpus=cpus)
        try:
            r = ring_rate(Backend(name, v.sock, False, DISCARD_TAP), timing, log_dir, round_no,
                          {"vionet": v.proc.pid})
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                tx = v.stats()["tx"]
                r.detail["vionet_tx"] = {k: tx[k] for k in ("chains", "discarded",
                                                            "notify_suppressed",
                                                            "notifications")}
            return r
        finally:
            v.close()
    except (dpdklib.DpdkError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        return Result(2, "64 B", "guest TX", name, error=short_error(e))


def ring_net_vhost(work: Path, timing: Timing, log_dir: Path, round_no: int) -> Result:
    name = "DPDK net_vhost"
    sock = work / "net_vhost.sock"
    try:
        with dpdklib.vhost_backend(sock, fwd="rxonly", main_lcore=0, log_dir=log_dir) as vh:
            return ring_rate(Backend(name, sock, False, ""), timing, log_dir, round_no,
                             {"net_vhost": vh.proc.pid})
    except (dpdklib.DpdkError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        return Result(2, "64 B", "guest TX", name, error=short_error(e))


def part2(ns: guestlib.GuestNetns, timing: Timing, work: Path, log_dir: Path,
          cpus: set[int] | None) -> list[Result]:
    """Alternate the two backends `timing.ring_rounds` times; keep each one's best."""
    ours, peer = [], []
    for n in range(timing.ring_rounds):
        ours.append(ring_vionet(ns, timing, work, log_dir, n, cpus))
        peer.append(ring_net_vhost(work, timing, log_dir, n))
    return [best_of(ours), best_of(peer)]


# --- part 3: a real guest -------------------------------------------------------------------------

def iperf(guest: guestlib.Guest, host: str, seconds: int, reverse: bool
          ) -> tuple[float, dict[str, Any]]:
    """The best full 1 s interval in Gbit/s (the guest is the client; -R: it
    receives), and the whole run's mean as the receiver counted it."""
    flag = " -R" if reverse else ""
    cmd = (f"for i in $(seq {IPERF_RETRIES}); do iperf3 -J -c {host} -p {IPERF_PORT} "
           f"-t {seconds}{flag} > /tmp/i.json && break; sleep 1; done; cat /tmp/i.json")
    out = guest.check(cmd, timeout=seconds * IPERF_RETRIES + IPERF_SLACK_S)
    report = json.loads(out[out.index("{"):])
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    intervals = [i["sum"]["bits_per_second"] / 1e9 for i in report["intervals"]
                 if i["sum"]["seconds"] >= IPERF_FULL_INTERVAL_S]
    mean = float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    detail = {"intervals_gbps": [round(x, 3) for x in intervals], "mean_gbps": round(mean, 3),
              "retransmits": report["end"].get("sum_sent", {}).get("retransmits")}
    return (max(intervals) if intervals else mean), detail


@dataclasses.dataclass(frozen=True)
class GuestSetup:
    """One way to give the guest its NIC in part 3."""

    name: str
    tap: str
    host: str
    guest: str
    judged: bool  # compared against the target (False: shown for information)
    msix: bool = False


GUEST_SETUPS = (
    GuestSetup("vionet", GUEST_VIONET_TAP, *GUEST_NETS["vionet"], judged=True),
    # vectors=0 as on the vhost-user device (QEMU 7.2/TCG needs it there): like for like.
    GuestSetup("QEMU tap", GUEST_QEMU_TAP, *GUEST_NETS["QEMU tap"], judged=True),
    GuestSetup("QEMU tap (MSI-X)", GUEST_MSIX_TAP, *GUEST_NETS["QEMU tap (MSI-X)"],
               judged=False, msix=True),
)


def add_address(ns: guestlib.GuestNetns, tap: str, host: str) -> None:
    ns.run(["ip", "addr", "replace", f"{host}/24", "dev", tap])
    ns.run(["ip", "link", "set", tap, "up"])


def start_guest(stack: contextlib.ExitStack, image: guestlib.GuestImage,
                ns: guestlib.GuestNetns, setup: GuestSetup, work: Path
                ) -> tuple[guestlib.Guest, dict[str, int]]:
    """Boot one guest on `setup`'s backend; everything it needs is undone by `stack`.
    Returns the guest and the processes whose threads do its work (for CPU shares)."""
    pids = {}
    if setup.name == "vionet":
        v = VionetProc(ns, work, setup.tap)
        stack.callback(v.close)
        pids["vionet"] = v.proc.pid
        netdev: guestlib.Netdev = guestlib.VhostUserNetdev(str(v.sock))
    else:
        ns.run(["ip", "tuntap", "add", "dev", setup.tap, "mode", "tap"])
        stack.callback(ns.run, ["ip", "link", "del", setup.tap], check=False)
        props: dict[str, guestlib.PropValue] = {} if setup.msix else {"vectors": 0}
        netdev = guestlib.TapNetdev(setup.tap, device_props=props)
    add_address(ns, setup.tap, setup.host)
    log_name = re.sub(r"\W+", "-", setup.name).strip("-")
    g = guestlib.Guest(image, netdev, ip=f"{setup.guest}/24", netns=ns.name,
                       log_path=work / f"guest-{log_name}.log")
    stack.callback(g.close)
    pids["qemu"] = g.proc.pid
    return g, pids


def guest_rounds(guests: dict[str, guestlib.Guest], pids: dict[str, dict[str, int]],
                 setups: list[GuestSetup], timing: Timing) -> list[Result]:
    """Alternate the guests run after run (both directions, `timing.guest_rounds`
    rounds): load changes hit every backend alike.  Best interval over the rounds."""
    results = {(s.name, d): Result(3, "iperf3 TCP", d, s.name,
                                   detail={"rounds_best_gbps": [], "rounds_mean_gbps": []})
               for s in setups for d in ("guest TX", "guest RX")}
    for _ in range(timing.guest_rounds):
        for d in ("guest TX", "guest RX"):
            for s in setups:
                res = results[(s.name, d)]
                if s.name not in guests:
                    continue
                s0 = sched_sample(pids[s.name])
                try:
                    best, detail = iperf(guests[s.name], s.host, timing.iperf_s,
                                         d == "guest RX")
                except (guestlib.GuestError, RuntimeError, ValueError, KeyError) as e:
                    res.error = short_error(e)
                    continue
                res.detail.setdefault("threads_by_round", []).append(
                    sched_report(s0, sched_sample(pids[s.name])))
                res.gbps = max(res.gbps or 0.0, best)
                res.detail["rounds_best_gbps"].append(round(best, 3))
                res.detail["rounds_mean_gbps"].append(detail["mean_gbps"])
                res.detail.setdefault("retransmits", []).append(detail["retransmits"])
                res.detail.setdefault("loadavg", []).append(loadavg())
    for r in results.values():  # a number from any round stands; the error stays in detail
        if r.gbps is not None and r.error:
            r.detail["error_in_a_round"], r.error = r.error, None
    return list(results.values())


def part3(ns: guestlib.GuestNetns, timing: Timing, work: Path) -> list[Result]:
    """All guests booted at once (an idle TCG guest costs little), then alternated."""
    setups = [s for s in GUEST_SETUPS if s.judged or timing.tap_msix]
    reason = guestlib.skip_reason()
    image = None
    if reason is None:
        try:
            image = guestlib.GuestImage.build()
        except (guestlib.GuestError, OSError, subprocess.SubprocessError) as e:
            reason = f"guest image: {short_error(e)}"
    if image is None:
        return [Result(3, "iperf3 TCP", d, s.name, error=reason)
                for s in setups for d in ("guest TX", "guest RX")]
    failed: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        server = ns.popen(image.host_iperf3("-s", "-p", str(IPERF_PORT)),
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        stack.callback(guestlib.stop_process, server)
        guests, pids = {}, {}
        for setup in setups:
            try:
                guests[setup.name], pids[setup.name] = start_guest(stack, image, ns, setup,
                                                                   work)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                failed[setup.name] = f"start: {short_error(e)}"
        for name, g in list(guests.items()):
            try:
                g.wait_booted()
            except guestlib.GuestError as e:
                failed[name] = f"boot: {short_error(e)}"
                del guests[name]
        log.info("guests up (%s); iperf3 %d round(s)", ", ".join(guests), timing.guest_rounds)
        results = guest_rounds(guests, pids, setups, timing)
    for r in results:
        if r.backend in failed:
            r.error = failed[r.backend]
    return results


# --- report ---------------------------------------------------------------------------------------

def find(results: list[Result], part: int, case: str, direction: str, backend: str) -> Result:
    for r in results:
        if (r.part, r.case, r.direction, r.backend) == (part, case, direction, backend):
            return r
    return Result(part, case, direction, backend, error="not run")


def verdicts(results: list[Result]) -> list[Verdict]:
    out = []
    for case in CASES:
        for d in ("guest TX", "guest RX"):
            out.append(judge(1, case.name, d, case.metric, case.target,
                             find(results, 1, case.name, d, "vionet"),
                             find(results, 1, case.name, d, "OVS-DPDK")))
    out.append(judge(2, "64 B", "guest TX", "pps", TARGET_RING_PPS,
                     find(results, 2, "64 B", "guest TX", "vionet --discard"),
                     find(results, 2, "64 B", "guest TX", "DPDK net_vhost")))
    for d in ("guest TX", "guest RX"):
        out.append(judge(3, "iperf3 TCP", d, "gbps", TARGET_GUEST,
                         find(results, 3, "iperf3 TCP", d, "vionet"),
                         find(results, 3, "iperf3 TCP", d, "QEMU tap")))
    return out


# Characters of an error shown in a table cell (the JSON has all of it).
CELL_ERROR_CHARS = 40


def cell(r: Result, metric: str) -> str:
    if r.error:
        return f"({r.error[:CELL_ERROR_CHARS]})"
    mark = "*" if r.detail.get("sender_bound") else ""
    return (fmt_pps(r.pps) if metric == "pps" else fmt_gbps(r.gbps)) + mark


def backend_cpu(r: Result) -> float | None:
    """CPUs the backend's threads used over the measurement (None: not known)."""
    shares = [t["cpu"] for k, t in r.detail.get("threads", {}).items()
              if not k.startswith(("guest:", "injector:"))]
    return sum(shares) if shares else None


def per_cpu(r: Result, metric: str) -> float | None:
    """The span's mean rate per CPU the backend used: packets (pps) or bits
    (gbps) per CPU-second.  A polling backend's CPU includes idle polls."""
    cpu, per_s = backend_cpu(r), r.detail.get("per_s", {})
    if not cpu or not per_s:
        return None
    key = next((k for k in per_s if k in ("tap.rx_packets", "guest.rx_packets",
                                          "guest.tx_packets")), None)
    if key is None:
        return None
    if metric == "gbps":
        key = key.replace("_packets", "_bytes")
        return per_s.get(key, 0) * 8 / 1e9 / cpu
    return per_s[key] / cpu


def efficiency(a: Result, b: Result, metric: str) -> str:
    x, y = per_cpu(a, metric), per_cpu(b, metric)
    return "-" if x is None or not y else f"{x / y:.2f}x"


def cpu_cell(r: Result, prefix: str = "") -> str:
    """The backend's busiest thread (or the busiest whose name starts with
    `prefix`): share of a CPU it ran / waited runnable.  Part 3: the last round."""
    report = r.detail.get("threads") or (r.detail.get("threads_by_round") or [{}])[-1]
    threads = [t for k, t in report.items()
               if not k.startswith(("guest:", "injector:")) and k.startswith(prefix)]
    if not threads:
        return "-"
    t = max(threads, key=lambda t: t["cpu"])
    return f"{t['cpu'] * 100:.0f}/{t['runq_wait'] * 100:.0f}%"


def tables(results: list[Result], vs: list[Verdict], parts: set[int], timing: Timing) -> str:
    def verdict_of(part: int, case: str, d: str) -> Verdict:
        return next(v for v in vs if (v.part, v.case, v.direction) == (part, case, d))

    def ratio(v: Verdict) -> str:
        return "-" if v.ratio is None else f"{v.ratio:.2f}x {v.metric}"

    rows1 = []
    for case in CASES:
        for d in ("guest TX", "guest RX"):
            a, b = find(results, 1, case.name, d, "vionet"), find(results, 1, case.name, d,
                                                                 "OVS-DPDK")
            v = verdict_of(1, case.name, d)
            rows1.append([case.name, d, cell(a, "pps"), cell(a, "gbps"), cpu_cell(a),
                          cell(b, "pps"), cell(b, "gbps"), cpu_cell(b), ratio(v),
                          f">= {case.target}x", v.verdict, efficiency(a, b, case.metric)])
    t1 = tabulate(rows1, headers=["frames", "direction", "vionet", "Gbit/s", "CPU", "OVS-DPDK",
                                  "Gbit/s", "CPU", "vionet/OVS", "target", "result",
                                  "per CPU-s"], disable_numparse=True)
    a = find(results, 2, "64 B", "guest TX", "vionet --discard")
    b = find(results, 2, "64 B", "guest TX", "DPDK net_vhost")
    v = verdict_of(2, "64 B", "guest TX")
    t2 = tabulate([["64 B txonly", cell(a, "pps"), cpu_cell(a), cell(b, "pps"), cpu_cell(b),
                    ratio(v), f">= {TARGET_RING_PPS}x", v.verdict]],
                  headers=["frames", "vionet --discard", "CPU", "net_vhost rxonly", "CPU",
                           "ratio", "target", "result"], disable_numparse=True)
    rows3 = []
    for d in ("guest TX", "guest RX"):
        a = find(results, 3, "iperf3 TCP", d, "vionet")
        b = find(results, 3, "iperf3 TCP", d, "QEMU tap")
        c = find(results, 3, "iperf3 TCP", d, "QEMU tap (MSI-X)")
        v = verdict_of(3, "iperf3 TCP", d)
        rows3.append([d, cell(a, "gbps"), cpu_cell(a, "qemu"), cpu_cell(a, "vionet"),
                      cell(b, "gbps"), cpu_cell(b, "qemu"), ratio(v), f">= {TARGET_GUEST}x",
                      v.verdict, cell(c, "gbps") if c.error != "not run" else "-"])
    t3 = tabulate(rows3, headers=["iperf3 TCP", "vionet Gbit/s", "vCPU", "vionet CPU",
                                  "QEMU tap Gbit/s", "vCPU", "ratio", "target", "result",
                                  "QEMU tap MSI-X (info)"],
                  disable_numparse=True)
    text = {1: f"1. virtio_user <-> backend <-> tap: vionet vs OVS-DPDK (userspace TSO)\n{t1}\n",
            2: f"2. raw ring speed (virtio_user txonly, backend discards)\n{t2}\n",
            3: f"3. QEMU/TCG guest, iperf3: vionet vs QEMU's tap backend (vhost=off)\n{t3}\n"}
    legend = ("CPU: the backend's busiest thread, % of a CPU it ran / % it waited runnable "
              "for one (the rest it slept); vCPU: QEMU's busiest thread (the TCG vCPU), "
              "last round\n"
              "per CPU-s: vionet/OVS of the mean rate per CPU-second the backend's threads "
              "ran (OVS's PMD polls: its idle polls count as CPU)\n"
              "* the tap dropped < 5 % of what the backend read: it kept up with the "
              "injector, the rate is a lower bound\n"
              f"rates: the best of {timing.windows} windows of {timing.window_s:g} s after a "
              f"{timing.warmup_s:g} s warm-up (medians in the JSON); iperf3: the best 1 s "
              f"interval of {timing.iperf_s} s (means in the JSON)\n")
    return "\n".join(text[p] for p in sorted(parts)) + "\n" + legend


def environment(timing: Timing, quick: bool) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "quick": quick,
            "timing": dataclasses.asdict(timing),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def best_rounds(rounds: list[list[Result]]) -> list[Result]:
    """Part 1 results of several rounds merged: per backend, case and direction
    the best by the case's metric; every round's value stays in the detail."""
    merged: dict[tuple[str, str, str], list[Result]] = {}
    for batch in rounds:
        for r in batch:
            merged.setdefault((r.backend, r.case, r.direction), []).append(r)
    out = []
    for (_, case, _), rs in merged.items():
        metric = next((c.metric for c in CASES if c.name == case), "pps")
        good = [r for r in rs if r.error is None and r.value(metric) is not None]
        best = max(good, key=lambda r: r.value(metric) or 0.0) if good else rs[-1]
        if len(rs) > 1:
            best.detail["rounds"] = [{"pps": None if r.pps is None else round(r.pps),
                                      "gbps": None if r.gbps is None else round(r.gbps, 3),
                                      "error": r.error} for r in rs]
        out.append(best)
    return out


# What a reader of the numbers must know (also in the module docstring).
NOTES = [
    "2 CPUs shared with other users: every busy thread (DPDK pollers, vionet, OVS, QEMU's "
    "vCPU) got roughly half a CPU and waited runnable for the rest (see each result's "
    "'threads': cpu = share of a CPU it ran, runq_wait = share it waited for one); rates vary "
    "by 2x or more between runs, so the best window is the headline and medians are kept.",
    "Guest RX through OVS: OVS polls tap ports from its main thread, not a PMD thread; its "
    "PMD thread busy-polls the vhost port on CPU 1 and the guest's testpmd busy-polls CPU 0, "
    "so the tap -> vhost path runs on what is left (vhu0 tx_drop: the guest ring was full "
    "while testpmd waited for a CPU). Non-PMD OVS threads are unpinned (dpdk-lcore-mask "
    "had pinned them to CPU 0).",
    "Guest RX rates marked sender_bound: the backend took (almost) all the injector offered; "
    "the injector (AF_PACKET sendmmsg) shares the same 2 CPUs.",
    "Part 2: vionet --discard validates and drops (no copy); net_vhost rxonly copies each "
    "packet into an mbuf.",
    "Part 3: both QEMU devices use vectors=0 (INTx), which QEMU 7.2/TCG needs for vhost-user; "
    "QEMU tap with MSI-X is shown for information. TCG throughput follows the vCPU thread's "
    "CPU share.",
]


# --- the run --------------------------------------------------------------------------------------

def measure_all(timing: Timing, parts: set[int], backends: set[str], keep: Path | None,
                cpus: set[int] | None, loads: dict[str, list[float]]) -> list[Result]:
    """Every part asked for, in our namespace; the load average around each step."""
    guestlib.remove_stale_netns(NETNS_PREFIX)
    reason = dpdklib.dpdk_available()
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        if keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vn-bench-")))
        else:
            work = keep
            work.mkdir(parents=True, exist_ok=True)
        log_dir = work / "dpdk-logs"
        ns = stack.enter_context(guestlib.GuestNetns(f"{NETNS_PREFIX}{os.getpid()}"))
        ns.run(["ip", "link", "set", "lo", "up"])
        for knob in ("all", "default"):  # no IPv6 chatter (DAD, RS, MLD) on the taps
            ns.run(["sysctl", "-qw", f"net.ipv6.conf.{knob}.disable_ipv6=1"])
        steps: list[tuple[int, str, Callable[[], list[Result]]]] = [
            (2, "ring", lambda: part2(ns, timing, work, log_dir, cpus))]
        for n in range(timing.part1_rounds):  # alternate: load changes hit both alike
            steps += [(1, f"vionet-{n}", lambda: part1_vionet(ns, timing, work, log_dir, cpus)),
                      (1, f"ovs-{n}", lambda: part1_ovs(ns, timing, work, log_dir))]
        steps.append((3, "guest", lambda: part3(ns, timing, work)))
        part1: list[list[Result]] = []
        for part, name, step in steps:
            backend = name.split("-")[0]
            if part not in parts or (part == 1 and backend not in backends):
                continue
            if reason and part in (1, 2):
                results += (unavailable("vionet" if backend == "vionet" else "OVS-DPDK", reason)
                            if part == 1 else
                            [Result(2, "64 B", "guest TX", b, error=reason)
                             for b in ("vionet --discard", "DPDK net_vhost")])
                continue
            loads[f"{name}_before"] = loadavg()
            log.info("part %d (%s), load %s", part, name, loads[f"{name}_before"])
            if part == 1:
                part1.append(step())
            else:
                results += step()
            loads[f"{name}_after"] = loadavg()
        results += best_rounds(part1)
    return results


def not_root(parts: set[int]) -> list[Result]:
    """Without root nothing here can run (namespaces, taps, DPDK, hugepages)."""
    why = "needs root (network namespaces, taps, DPDK EAL, hugepages)"
    out: list[Result] = []
    if 1 in parts:
        out += unavailable("vionet", why) + unavailable("OVS-DPDK", why)
    if 2 in parts:
        out += [Result(2, "64 B", "guest TX", b, error=why)
                for b in ("vionet --discard", "DPDK net_vhost")]
    if 3 in parts:
        out += [Result(3, "iperf3 TCP", d, g.name, error=why)
                for g in GUEST_SETUPS for d in ("guest TX", "guest RX")]
    return out


def run(timing: Timing, quick: bool, parts: set[int], backends: set[str], out: Path,
        keep: Path | None, pin: bool) -> int:
    env = environment(timing, quick)
    cpus = BACKEND_CPUS if pin and BACKEND_CPUS <= os.sched_getaffinity(0) else None
    env["vionet_cpus"] = sorted(cpus) if cpus else "any"
    env["loadavg_before"] = loadavg()
    loads: dict[str, list[float]] = {}
    t_start = time.monotonic()
    if os.geteuid() != 0:
        results = not_root(parts)
    else:
        results = measure_all(timing, parts, backends, keep, cpus, loads)
    env["loadavg_after"] = loadavg()
    env["loadavg_steps"] = loads
    env["wall_s"] = round(time.monotonic() - t_start, 1)
    for r in results:
        if r.part == 1:
            metric = next(c.metric for c in CASES if c.name == r.case)
            r.detail["per_cpu_s"] = per_cpu(r, metric)
    vs = verdicts(results)
    sys.stdout.write(tables(results, vs, parts, timing))
    errors = sorted({f"{r.backend}: {r.error}" for r in results if r.error})
    if errors:
        sys.stdout.write("not measured:\n" + "".join(f"  {e}\n" for e in errors))
    sys.stdout.write(f"load average {env['loadavg_before'][0]:.2f} before, "
                     f"{env['loadavg_after'][0]:.2f} after (2 shared cores); "
                     f"{env['wall_s']:.0f} s\n")
    sys.stdout.flush()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "notes": NOTES,
              "results": [dataclasses.asdict(r) for r in results],
              "verdicts": [dataclasses.asdict(v) for v in vs],
              "targets": {"tso_gbps_vs_ovs": TARGET_TSO_GBPS,
                          "small_pps_vs_ovs": TARGET_SMALL_PPS,
                          "ring_pps_vs_net_vhost": TARGET_RING_PPS,
                          "guest_iperf_vs_qemu_tap": TARGET_GUEST}}
    out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", out)
    return 0


# --- the injector (a child process: python -m bench.vionet inject ...) ---------------------------

SOL_PACKET = 263
PACKET_VNET_HDR = 15       # linux/if_packet.h: a virtio_net_hdr precedes each frame
PACKET_QDISC_BYPASS = 20   # straight to the driver's xmit: the tap's queue is the only queue
# Frames per sendmmsg call: small enough for even pacing at a few Mpps (one
# call every ~40 us at 1.5 Mpps), large enough that the Python loop is noise.
INJECT_BATCH = 64
# After a failed sendmmsg (e.g. ENOBUFS: no memory for more skbs), before the next.
INJECT_ERROR_PAUSE_S = 1e-4
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6 = 1, 4


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def rx_frame(kind: str) -> tuple[bytes, bytes]:
    """(virtio_net_hdr or b"", frame) the injector sends towards the guest (MAC_B -> MAC_A).

    A super-packet is a GSO request with NEEDS_CSUM: its TCP check field holds
    the folded pseudo-header sum over the full L4 length, as a Linux sender's.
    """
    case = CASE_BY_KIND[kind]
    if not case.tso:
        f = dpdklib.udp_frame(case.frame_len)
        return b"", pktlib.MAC_A + pktlib.MAC_B + f[12:]
    f = dpdklib.tcp_superframe(case.mss, TSO_SEGMENTS, v6=case.v6)
    l3 = dpdklib.ETH_HLEN
    l4 = l3 + (dpdklib.IP6_HLEN if case.v6 else dpdklib.IP4_HLEN)
    src, dst = (f[l3 + 8:l3 + 24], f[l3 + 24:l3 + 40]) if case.v6 else \
        (f[l3 + 12:l3 + 16], f[l3 + 16:l3 + 20])
    ps = pktlib.pseudo_sum(6 if case.v6 else 4, src, dst, dpdklib.IPPROTO_TCP, len(f) - l4)
    f = pktlib.MAC_A + pktlib.MAC_B + f[12:l4 + 16] + struct.pack("!H", ps) + f[l4 + 18:]
    gso = VIRTIO_NET_HDR_GSO_TCPV6 if case.v6 else VIRTIO_NET_HDR_GSO_TCPV4
    hdr = struct.pack("<BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, l4 + dpdklib.TCP_HLEN,
                      case.mss, l4, 16)
    return hdr, f


def errno_name(n: int) -> str:
    return errno.errorcode.get(n, str(n))


def inject(ifname: str, kind: str, pps: int, seconds: float) -> dict[str, Any]:
    """Send `kind` frames out of `ifname` at up to `pps` until SIGTERM or `seconds`.

    Per batch one sendmmsg(2) of INJECT_BATCH messages that all point at the
    same frame (the kernel copies each); pacing by sleeping until the total
    sent matches the rate.  The tap drops what its reader does not take.
    """
    hdr, frame = rx_frame(kind)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    if hdr:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.bind((ifname, 0))
    parts = [ctypes.create_string_buffer(p, len(p)) for p in (hdr, frame) if p]
    iov = (_Iovec * len(parts))(*[_Iovec(ctypes.cast(p, ctypes.c_void_p), len(p.raw))
                                  for p in parts])
    msgs = (_Mmsghdr * INJECT_BATCH)()
    for m in msgs:
        m.msg_hdr.msg_iov, m.msg_hdr.msg_iovlen = iov, len(parts)
    libc = ctypes.CDLL(None, use_errno=True)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sent = 0
    errors: dict[str, int] = {}
    t0 = time.monotonic()
    deadline = t0 + seconds
    while not stop:
        n = libc.sendmmsg(sock.fileno(), msgs, INJECT_BATCH, 0)
        if n < 0:
            err = errno_name(ctypes.get_errno())
            errors[err] = errors.get(err, 0) + 1
            time.sleep(INJECT_ERROR_PAUSE_S)
        else:
            sent += n
        now = time.monotonic()
        if now > deadline:
            break
        ahead = t0 + sent / pps - now
        if ahead > 0:
            time.sleep(ahead)
    return {"sent": sent, "errors": errors, "seconds": time.monotonic() - t0,
            "frame_len": len(frame)}


def inject_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.vionet inject")
    ap.add_argument("--ifname", required=True)
    ap.add_argument("--kind", required=True, choices=sorted(CASE_BY_KIND))
    ap.add_argument("--pps", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args(argv)
    report = inject(args.ifname, args.kind, args.pps, args.seconds)
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inject"]:
        return inject_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench.vionet",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows (about 2 minutes)")
    ap.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 1,3")
    ap.add_argument("--backends", default="vionet,ovs",
                    help="part 1 backends to run (vionet, ovs)")
    ap.add_argument("--no-pin", action="store_true",
                    help="parts 1-2: leave vionet's threads to the scheduler (default: CPU 1, "
                         "where the DPDK backends poll)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON output file")
    ap.add_argument("--keep", type=Path, help="keep logs and work files in this directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C, so every process and mount is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    parts = {int(p) for p in args.parts.split(",") if p}
    backends = set(args.backends.split(","))
    return run(QUICK if args.quick else FULL, args.quick, parts, backends, args.out, args.keep,
               not args.no_pin)


if __name__ == "__main__":
    sys.exit(main())
