"""DPDK pieces for benchmarks: a traffic blaster and Open vSwitch-DPDK as a C peer.

`blast` drives DPDK's virtio_user guest driver (tests/dpdklib.py) at full speed
for a fixed time against any vhost-user backend: vionet, DPDK's net_vhost
(`dpdklib.vhost_backend`) or OVS-DPDK (`ovs_dpdk_vhost`).

`ovs_dpdk_vhost` runs a private Open vSwitch with DPDK: its own database,
ovsdb-server and ovs-vswitchd started by us (killed by PID), all inside a
network namespace of ours, with hugepages it reserves and a hugetlbfs it
mounts in its work directory, and undoes all of that on exit.  One bridge
(netdev datapath) joins a ``dpdkvhostuserclient`` port (OVS connects to a
guest listening on the returned socket: virtio_user with server=True) and a
``tap`` port that OVS writes with a vnet header (``userspace-tso-enable``), so
TSO super-frames reach the kernel whole.

Measured here (OVS 3.1.0 / DPDK 22.11, Debian 12): ovs-vswitchd needs ~4 s to
initialise DPDK; the guest's link comes up ~1.5 s after it starts listening
(OVS retries its connect every second); with a --no-huge (memfd) guest no
``--single-file-segments`` is needed; OVS negotiates CSUM and HOST_TSO4/6 with
virtio_user when the guest enables TSO, and 64 KiB super-frames arrive in the
namespace's tap as single GSO packets (10 sent, rx_packets 10, 652140 bytes).
/dev/hugepages does not exist on these machines: we mount our own.

Self-check (root): ``python3 -m bench.dpdk_common`` from the repository root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:  # dpdklib and pktlib live with the tests
    sys.path.insert(0, str(REPO / "tests"))

import dpdklib  # noqa: E402

log = logging.getLogger(__name__)

OVS_VSWITCHD_DPDK = Path("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk")
OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
OVSDB_SERVER = shutil.which("ovsdb-server")
OVSDB_TOOL = shutil.which("ovsdb-tool")
OVS_VSCTL = shutil.which("ovs-vsctl")
IP = shutil.which("ip")
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
HUGEPAGE_SIZE = "2M"
# 2 GiB of 2 MiB pages, as DESIGN.md measured OVS-DPDK to run with.
DEFAULT_HUGEPAGES = 1024
# Preallocated DPDK memory of ovs-vswitchd (MiB): mempools for a few ports.
DEFAULT_SOCKET_MEM_MB = 512
# Core 0 for OVS's main thread, core 1 for its PMD thread (busy-polls while running).
OVS_LCORE_MASK, OVS_PMD_CPU_MASK = 0x1, 0x2
# ovsdb-server answers in milliseconds; ovs-vswitchd's DPDK init took ~4 s here.
DB_TIMEOUT = 10.0
VSWITCHD_TIMEOUT = 60.0
# ovs-vsctl waits this long for ovs-vswitchd to apply a change.
VSCTL_TIMEOUT = 30
# SIGTERM, then this long before SIGKILL.
STOP_TIMEOUT = 10.0
BRIDGE = "br0"
VHOST_PORT = "vhu0"
TAP_PORT = "vntap0"
# The blaster's warm-up before it counts (ring fill, first renegotiation).
BLAST_WARMUP = 0.5
_NETNS_SEQ = itertools.count()


def ovs_dpdk_available() -> str | None:
    """None if OVS-DPDK can run here, otherwise why not."""
    missing = [n for n, p in (("ovs-vswitchd-dpdk", OVS_VSWITCHD_DPDK.exists() or None),
                              ("ovsdb-server", OVSDB_SERVER), ("ovsdb-tool", OVSDB_TOOL),
                              ("ovs-vsctl", OVS_VSCTL), ("ip", IP)) if not p]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install openvswitch-switch-dpdk)"
    if os.geteuid() != 0:
        return "OVS-DPDK needs root (hugepages, netns)"
    return dpdklib.dpdk_available()


# -- blasting a backend ---------------------------------------------------------

@dataclasses.dataclass
class BlastResult:
    """What the guest managed to hand the backend in `seconds`."""

    packets: int
    bytes: int
    dropped: int  # bursts the backend did not take in time (ring full past retries)
    seconds: float

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0

    @property
    def gbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds else 0.0


def blast(sock_path: str | os.PathLike[str], frames: Sequence[bytes], seconds: float, *,
          tso_mss: int | None = None, csum: bool = False, server: bool = False,
          on_ready: Callable[[], None] | None = None, log_dir: str | os.PathLike[str] | None = None
          ) -> BlastResult:
    """Send `frames` in a loop from a virtio_user guest for `seconds` (after a warm-up).

    Counts come from the guest's port counters, so they say what the backend
    accepted from the ring, the same way for every backend.  `on_ready`
    (callable) runs once the socket listens in server mode.
    """
    with tempfile.TemporaryDirectory(prefix="vn-blast-") as work:
        pcap = Path(work) / "frames.pcap"
        dpdklib.write_pcap(pcap, frames)
        big = max(len(f) for f in frames) > 1900  # 2 KiB mbufs minus headroom
        with dpdklib.VirtioUser(sock_path, send_pcap=pcap, repeat=True, capture=False,
                                server=server, csum=csum, tso_mss=tso_mss,
                                mbuf_size=dpdklib.MAX_MBUF_SIZE if big else None,
                                log_dir=log_dir) as vu:
            if on_ready:
                on_ready()
            vu.link_up()
            vu.start()
            time.sleep(BLAST_WARMUP)
            before, t0 = vu.pmd.port_stats(dpdklib.VU_PORT), time.monotonic()
            fwd0 = vu.pmd.fwd_stats().get(dpdklib.VU_PORT, dpdklib.FwdStats())
            time.sleep(seconds)
            after, t1 = vu.pmd.port_stats(dpdklib.VU_PORT), time.monotonic()
            fwd1 = vu.pmd.fwd_stats().get(dpdklib.VU_PORT, dpdklib.FwdStats())
            vu.pmd.stop()
    return BlastResult(after.tx_packets - before.tx_packets, after.tx_bytes - before.tx_bytes,
                       fwd1.tx_dropped - fwd0.tx_dropped, t1 - t0)


# -- hugepages -------------------------------------------------------------------

class Hugepages:
    """Reserve 2 MiB hugepages and mount a private hugetlbfs; undo both on close."""

    def __init__(self, mountpoint: Path, pages: int = DEFAULT_HUGEPAGES) -> None:
        self.mountpoint = mountpoint
        self._old_pages: int | None = None
        self._mounted = False
        current = int(NR_HUGEPAGES.read_text())
        if current < pages:
            NR_HUGEPAGES.write_text(f"{pages}\n")
            self._old_pages = current
            got = int(NR_HUGEPAGES.read_text())
            if got < pages:
                self.close()
                raise RuntimeError(f"asked for {pages} hugepages, the kernel gave {got}")
        try:
            mountpoint.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={HUGEPAGE_SIZE}",
                            "nodev", str(mountpoint)], check=True, capture_output=True)
            self._mounted = True
        except (OSError, subprocess.CalledProcessError):
            self.close()
            raise

    def close(self) -> None:
        if self._mounted:
            r = subprocess.run(["umount", str(self.mountpoint)], capture_output=True, text=True)
            if r.returncode:
                log.error("umount %s: %s", self.mountpoint, r.stderr.strip())
            else:
                self._mounted = False
        if self._old_pages is not None:
            NR_HUGEPAGES.write_text(f"{self._old_pages}\n")
            self._old_pages = None


# -- a private Open vSwitch with DPDK -----------------------------------------------

def _stop(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM, bounded wait, SIGKILL: by PID, reaped."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("%s (%d) ignored SIGTERM: SIGKILL", name, proc.pid)
        proc.kill()
        proc.wait(STOP_TIMEOUT)


class OvsDpdk:
    """ovsdb-server + ovs-vswitchd-dpdk of our own, inside network namespace `netns`."""

    def __init__(self, workdir: Path, netns: str, *, tso: bool = True,
                 socket_mem_mb: int = DEFAULT_SOCKET_MEM_MB, huge_dir: Path) -> None:
        self.workdir, self.netns = workdir, netns
        self.db_sock = workdir / "db.sock"
        self.prefix = dpdklib.unique_prefix("ovs")
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        try:
            self._start_db()
            self._configure(tso, socket_mem_mb, huge_dir)
            self._start_vswitchd()
        except BaseException:
            self.close()
            raise

    def _in_netns(self, argv: list[str]) -> list[str]:
        assert IP
        return [IP, "netns", "exec", self.netns, *argv]

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.workdir / f"{name}.out", "wb")  # noqa: SIM115 (child keeps it)
        with out:
            proc = subprocess.Popen(self._in_netns(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, "OVS_RUNDIR": str(self.workdir),
                                         "OVS_DBDIR": str(self.workdir),
                                         "OVS_LOGDIR": str(self.workdir)})
        self._procs.append((name, proc))

    def _start_db(self) -> None:
        assert OVSDB_TOOL and OVSDB_SERVER
        db = self.workdir / "conf.db"
        subprocess.run([OVSDB_TOOL, "create", str(db), str(OVS_SCHEMA)], check=True,
                       capture_output=True)
        self._spawn("ovsdb-server", [
            OVSDB_SERVER, str(db), f"--remote=punix:{self.db_sock}",
            f"--unixctl={self.workdir / 'ovsdb.ctl'}", f"--log-file={self.workdir}/ovsdb.log",
            "--no-chdir"])
        self._wait_for(lambda: self.db_sock.is_socket(), DB_TIMEOUT, "ovsdb-server socket")
        self.vsctl("--no-wait", "init")

    def _configure(self, tso: bool, socket_mem_mb: int, huge_dir: Path) -> None:
        extra = f"--file-prefix={self.prefix} --no-pci --huge-dir={huge_dir}"
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                   "other_config:dpdk-init=true", f"other_config:dpdk-extra={extra}",
                   f"other_config:dpdk-socket-mem={socket_mem_mb}",
                   f"other_config:dpdk-lcore-mask={OVS_LCORE_MASK:#x}",
                   f"other_config:pmd-cpu-mask={OVS_PMD_CPU_MASK:#x}",
                   f"other_config:userspace-tso-enable={'true' if tso else 'false'}")

    def _start_vswitchd(self) -> None:
        self._spawn("ovs-vswitchd", [
            str(OVS_VSWITCHD_DPDK), f"unix:{self.db_sock}",
            f"--unixctl={self.workdir / 'vswitchd.ctl'}",
            f"--log-file={self.workdir}/vswitchd.log", "--no-chdir"])
        self._wait_for(lambda: self.vsctl("get", "Open_vSwitch", ".", "dpdk_initialized")
                       == "true", VSWITCHD_TIMEOUT, "ovs-vswitchd DPDK init")

    def _wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}); see {self.workdir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; see {self.workdir}")
            time.sleep(0.2)

    def vsctl(self, *args: str) -> str:
        assert OVS_VSCTL
        r = subprocess.run([OVS_VSCTL, f"--db=unix:{self.db_sock}",
                            f"--timeout={VSCTL_TIMEOUT}", *args],
                           capture_output=True, text=True, timeout=VSCTL_TIMEOUT + 5)
        if r.returncode:
            raise RuntimeError(f"ovs-vsctl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout.strip()

    def add_bridge(self, vhost_socket: Path) -> None:
        """br0 (netdev datapath) with a vhost-user client port and a tap port."""
        self.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev")
        self.vsctl("add-port", BRIDGE, VHOST_PORT, "--", "set", "Interface", VHOST_PORT,
                   "type=dpdkvhostuserclient", f"options:vhost-server-path={vhost_socket}")
        self.vsctl("add-port", BRIDGE, TAP_PORT, "--", "set", "Interface", TAP_PORT,
                   "type=tap")
        assert IP
        subprocess.run([IP, "-n", self.netns, "link", "set", TAP_PORT, "up"], check=True)

    def negotiated_features(self) -> list[int]:
        """Every virtio feature set OVS's vhost library logged as negotiated."""
        log_text = (self.workdir / "vswitchd.log").read_bytes()
        return [int(h, 16) for h in dpdklib._NEGOTIATED_RE.findall(log_text)]

    def close(self) -> None:
        """Remove the bridge (and its taps), stop both daemons by PID, clean up."""
        if self._procs and all(p.poll() is None for _, p in self._procs):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.vsctl("--if-exists", "del-br", BRIDGE)
        for name, proc in reversed(self._procs):
            _stop(proc, name)
        self._procs.clear()
        shutil.rmtree(dpdklib.DPDK_RUNTIME_DIR / self.prefix, ignore_errors=True)


def tap_counters(netns: str, ifname: str) -> dict[str, int]:
    """The kernel's counters of `ifname` in `netns` (rx = what OVS wrote to the tap)."""
    assert IP
    out = subprocess.run([IP, "-n", netns, "-s", "-j", "link", "show", ifname],
                         check=True, capture_output=True, text=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return {f"{d}_{k}": v for d in ("rx", "tx") for k, v in stats[d].items()}


@dataclasses.dataclass
class OvsVhostPort:
    socket_path: Path  # the guest listens here (virtio_user server=1); OVS connects
    netns: str  # where ovs-vswitchd and its tap live
    tap: str
    ovs: OvsDpdk


@contextlib.contextmanager
def _netns(name: str) -> Iterator[str]:
    assert IP
    subprocess.run([IP, "netns", "add", name], check=True, capture_output=True)
    try:
        for knob in ("all", "default"):  # no IPv6 chatter (DAD, RS, MLD) from the taps
            subprocess.run([IP, "netns", "exec", name, "sysctl", "-qw",
                            f"net.ipv6.conf.{knob}.disable_ipv6=1"], check=True)
        yield name
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def ovs_dpdk_vhost(workdir: str | os.PathLike[str] | None = None, *, tso: bool = True,
                   hugepages: int = DEFAULT_HUGEPAGES,
                   socket_mem_mb: int = DEFAULT_SOCKET_MEM_MB) -> Iterator[OvsVhostPort]:
    """A private OVS-DPDK bridge: vhost-user client port + tap; yields where to listen."""
    reason = ovs_dpdk_available()
    if reason:
        raise RuntimeError(reason)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="vn-ovs-"))
        work = Path(workdir)
        ns = stack.enter_context(_netns(f"vn-ovs-{os.getpid()}-{next(_NETNS_SEQ)}"))
        huge = Hugepages(work / "huge", hugepages)
        stack.callback(huge.close)
        ovs = OvsDpdk(work, ns, tso=tso, socket_mem_mb=socket_mem_mb, huge_dir=huge.mountpoint)
        stack.callback(ovs.close)
        sock = work / "vhu0.sock"
        ovs.add_bridge(sock)
        yield OvsVhostPort(sock, ns, TAP_PORT, ovs)


def _self_check() -> int:
    """virtio_user -> OVS-DPDK -> tap: TSO super-frames arrive whole in the kernel."""
    logging.basicConfig(level=logging.INFO)
    reason = ovs_dpdk_available()
    if reason:
        print(f"SKIPPED: {reason}")
        return 0
    frames = [dpdklib.tcp_superframe(seq=i * 65160) for i in range(10)]
    with tempfile.TemporaryDirectory(prefix="vn-ovs-check-") as work:
        pcap = Path(work) / "super.pcap"
        dpdklib.write_pcap(pcap, frames)
        with ovs_dpdk_vhost() as port:
            t0 = time.monotonic()
            with dpdklib.VirtioUser(port.socket_path, send_pcap=pcap, server=True,
                                    capture=False, tso_mss=dpdklib.TSO_MSS) as vu:
                vu.link_up()
                up = time.monotonic() - t0
                vu.start()
                queued = vu.wait_tx(len(frames))
                arrived = vu.wait_until(lambda: tap_counters(port.netns, port.tap)[
                    "rx_packets"] >= len(frames), dpdklib.TRAFFIC_TIMEOUT)
                res = vu.finish(queued and arrived)
            tap = tap_counters(port.netns, port.tap)
            features = [sorted(dpdklib.feature_names(f)) for f in port.ovs.negotiated_features()]
    want = sum(len(f) for f in frames)
    print(f"link up after {up:.1f}s; guest sent {res.port.tx_packets}; tap got "
          f"{tap['rx_packets']} packets / {tap['rx_bytes']} B (want {len(frames)} / {want})")
    print(f"negotiated: {features}")
    ok = res.complete and tap["rx_packets"] == len(frames) and tap["rx_bytes"] == want
    print("SUCCESS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_self_check())
