"""Drive DPDK's dpdk-testpmd from Python: an independent guest driver and a C peer.

DPDK's ``net_virtio_user`` is a vhost-user *frontend* (a guest virtio-net driver
living in a process) and ``net_vhost`` a vhost-user *backend*.  Tests point the
frontend at vmdnet-vionet; benchmarks compare vionet with ``net_vhost``.

API: `TestPmd` (one interactive testpmd: `cmd`, `start`/`stop`, `set_fwd`,
`port_stats`, `fwd_stats`, `link_up`, `set_tx_offloads`, `set_rx_offloads`,
`verbose_packets`, `negotiated_features`, `close`); `VirtioUser` (guest driver
+ a pcap port to send from and capture into) with the wrappers
`virtio_user_tx` / `virtio_user_rx`; `vhost_backend` (net_vhost, optionally
fed from or captured into pcap); `VhostUserRecorder` (records what a frontend
asks for); pcap files (`write_pcap`, `read_pcap`, `repeat_pcap`) and test
frames (`tcp_frame`, `tcp_superframe`, `udp_frame`; 198.18.0.0/15, fd00::/8).

`TestPmd` feeds testpmd's stdin and reads its output through a pipe
(``stdbuf -oL -eL`` line-buffers its output, so every line arrives whole).  The
prompt cannot mark the end of a command's output: cmdline writes it one byte
per write(2) and other threads' log lines land inside it.  Each command is
followed by ``load <a path that cannot exist>``, whose one-line answer does.
Every wait is bounded, all output goes to a log file (DEFAULT_LOG_DIR unless
given), and `TestPmd.close` quits, then SIGTERMs, then SIGKILLs by PID, reaps,
and removes the EAL runtime directory.

Facts measured with DPDK 22.11 (Debian 12) here; [t] = checked by
tests/e2e/test_dpdk_harness.py.

testpmd / EAL
  * No hugepages: ``-l 0,1 --main-lcore N --no-huge -m M --no-pci
    --file-prefix=P``: memory is one memfd that net_vhost and OVS-DPDK map
    (``--single-file-segments`` is not needed).  Start-up grows with -m: a
    virtio_user connecting to net_vhost took 5.2 s with -m 1024 and 1.2 s with
    -m 256, hence DEFAULT_MEM_MB.  /var/run/dpdk/P stays after ``quit`` [t].
  * Without ``--disable-link-check`` every port start waits up to 9 s for a
    link a vhost port only gets from its peer.  The default mbuf pool is sized
    for 32 ports (~157k mbufs): pass ``--total-num-mbufs``.
  * testpmd reaches its prompt even when ports failed ("No probed ethernet
    devices", "Start ports failed"): `TestPmd` checks and raises [t].
  * ``--enable-rx-cksum`` asks for IPV4_CKSUM, which virtio lacks: the port
    fails to configure.  ``--rx-offloads``/``--tx-offloads`` apply to every
    port (a pcap port then fails): use ``port config N rx_offload X on`` and
    ``csum set``/``tso set`` per port, each between ``port stop N`` and
    ``port start N`` [t].  ``tso set`` on a port without TCP_TSO capability
    answers "Error: TSO is not supported by port N" [t].
  * ``start`` drains RX queues first, eating a pcap port's frames:
    ``--no-flush-rx`` [t].  ``set fwd MODE retry`` + ``set burst tx delay D
    retry N`` makes an engine wait for ring space instead of dropping.
  * ``txonly`` sends UDP/IPv4 only (``--txpkts`` sets the length; default
    addresses 198.18.0.1 -> 198.18.0.2) [t].  The ``csum`` engine rewrites both
    MACs (src = port MAC, dst = ``--eth-peer``): VirtioUser sets them to
    pktlib's MAC_A/MAC_B so frames stay as written.
  * net_pcap: ``infinite_rx=1`` refuses multi-segment mbufs, so frames must
    fit one mbuf (``--mbuf-size`` up to 65535); without it, large frames are
    read into mbuf chains and TSO works on chains [t].  Its capture side
    writes nanosecond pcap and cuts multi-segment packets to 16128 B: capture
    64 KiB frames with 64 KiB mbufs [t].
  * ``show port xstats`` of a net_vhost port fails while no frontend is
    connected.  Command echoes end in CRLF.

virtio_user (frontend)
  * Feature requests, offered every bit but PROTOCOL_FEATURES [t]: always
    VERSION_1, MRG_RXBUF, RING_INDIRECT_DESC, IN_ORDER (+ RING_PACKED with
    packed_vq=1, + PROTOCOL_FEATURES when offered); + GUEST_CSUM with RX
    checksum offload, + GUEST_TSO4/6 with tcp_lro; + CSUM with TX checksum
    offload, + HOST_TSO4/6 with TSO.  Never RING_EVENT_IDX, UFO, USO, ECN, MAC,
    MTU, CTRL_VQ (cq=1 would), MQ (queues=1).
  * The first negotiation (at probe) is always offload-free.  Each offload
    change (port stop/start) renegotiates on the same connection [t]:
    SET_VRING_ENABLE 0 (x2), GET_VRING_BASE (x2), SET_VRING_CALL (x2),
    SET_FEATURES, SET_STATUS 0xb (no status 0 first), SET_MEM_TABLE, ring
    setup, SET_VRING_ENABLE 1, SET_STATUS 0xf.  It sends SET_VRING_ENABLE even
    when PROTOCOL_FEATURES was not negotiated [t].
  * testpmd's offload capabilities of the port mirror the backend's offer
    (TCP_TSO only if it offers HOST_TSO4/6; TCP_LRO if GUEST_TSO4/6) [t].
  * Ring bytes with offloads on (seen raw by net_vhost) [t]: the frame as
    given except the L4 check field, which holds the pseudo-header sum over
    the full L4 length (Linux's NEEDS_CSUM form), for checksum offload and TSO.
    A TSO frame goes out as one GSO packet.
  * Client mode (default) connects at probe: no socket, no port [t].
    ``server=1`` blocks EAL's probe until a backend connects [t], refuses to
    bind over an existing path, and leaves its socket file behind (VirtioUser
    removes stale sockets).  Link status = the socket is connected.

net_vhost (backend)
  * Offers HOST_TSO4/6 only with ``tso=1`` [t]; never has TX TCP_TSO itself.
  * Default (compliant offload flags): rte_vhost completes a NEEDS_CSUM
    checksum in software before testpmd sees the packet (RX_L4_CKSUM_GOOD) and
    reports GSO as RX_LRO [t].  ``legacy-ol-flags=1`` (vhost_vdev raw=True)
    leaves the bytes as the guest wrote them and keeps GSO as a TX request, so
    io-forwarding to a second net_vhost port hands a guest GSO packets [t].
  * Logs every negotiated feature set ("negotiated Virtio features: 0x...").

Timings (2 shared cores, loaded): testpmd alone starts in ~1.2 s; one
`virtio_user_tx` call against a running backend ~2.5 s, nearly all start-up and
teardown; the e2e module ~60 s.  virtio_user -> net_vhost rxonly: 5.1 Mpps at
64 B, 1.3 Mpps (15.7 Gbit/s) at 1514 B, 5-14 Gbit/s of 64 KiB TSO frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pktlib

log = logging.getLogger(__name__)

TESTPMD = shutil.which("dpdk-testpmd")
STDBUF = shutil.which("stdbuf")
# What testpmd's ``load FILE`` prints (to stderr) when FILE cannot be opened.
_MARKER_REPLY = "Failed to create file based cmdline context: "
IPPROTO_TCP, IPPROTO_UDP = 6, 17
# The RX offloads virtio_user has, by testpmd name (``port config N rx_offload X on``).
# Not ipv4_cksum: virtio lacks it, and --enable-rx-cksum asks for it, which makes
# the virtio port fail to configure.
RX_OFFLOADS_ALL = ("udp_cksum", "tcp_cksum", "tcp_lro")
# EAL keeps one runtime directory per --file-prefix here (mp socket, fbarrays).
DPDK_RUNTIME_DIR = Path("/var/run/dpdk")
# EAL start-up plus port setup: about 1 s alone, several when the 2 cores are busy.
STARTUP_TIMEOUT = 60.0
# A plain command (show, set) answers in milliseconds; allow for a loaded host.
CMD_TIMEOUT = 15.0
# A vhost-user link comes up within about 1.5 s here (OVS retries once a second).
LINK_TIMEOUT = 30.0
# quit stops and closes every port; a vhost port waits for its peer a little.
QUIT_TIMEOUT = 15.0
# After SIGTERM, how long before SIGKILL.
TERM_TIMEOUT = 5.0
# Each pipe read; large enough that a stats dump arrives in one go.
READ_CHUNK = 65536
# Keep at most this much output in memory (the log file has everything).
MAX_BUFFER = 4 << 20
# EAL memory (-m, one memfd).  A vhost-user peer maps all of it, and start-up
# time grows with it: a virtio_user testpmd connecting to net_vhost takes about
# 5 s to come up with -m 1024 and under 2 s with -m 256 (measured here).
DEFAULT_MEM_MB = 256
# 64 KiB mbufs: BIG_MBUFS of them plus everything else.
BIG_MEM_MB = 512
BIG_MBUF_THRESHOLD = 16384
# Enough for two ports' rings (1024 + 1024 descriptors each) plus caches.
DEFAULT_MBUFS = 8192
# 64 KiB mbufs are expensive: 2048 of them take 128 MiB of BIG_MEM_MB.
BIG_MBUFS = 2048
# Logs outlive the run (for debugging a failure); a few KiB each unless verbose.
DEFAULT_LOG_DIR = Path(tempfile.gettempdir()) / "vmdnet-dpdk"
# Largest data room testpmd accepts (uint16 in rte_mbuf, headroom included).
MAX_MBUF_SIZE = 65535


# virtio feature bit -> spec name, for decoding what a vhost backend logs (test-side table,
# independent of vmdnet.virtio so a mistake there cannot hide here).
VIRTIO_FEATURE_NAMES = {
    0: "CSUM", 1: "GUEST_CSUM", 2: "CTRL_GUEST_OFFLOADS", 3: "MTU", 5: "MAC", 6: "GSO",
    7: "GUEST_TSO4", 8: "GUEST_TSO6", 9: "GUEST_ECN", 10: "GUEST_UFO", 11: "HOST_TSO4",
    12: "HOST_TSO6", 13: "HOST_ECN", 14: "HOST_UFO", 15: "MRG_RXBUF", 16: "STATUS",
    17: "CTRL_VQ", 18: "CTRL_RX", 19: "CTRL_VLAN", 20: "CTRL_RX_EXTRA",
    21: "GUEST_ANNOUNCE", 22: "MQ", 23: "CTRL_MAC_ADDR", 24: "NOTIFY_ON_EMPTY",
    27: "ANY_LAYOUT", 28: "RING_INDIRECT_DESC", 29: "RING_EVENT_IDX",
    30: "PROTOCOL_FEATURES", 32: "VERSION_1", 33: "ACCESS_PLATFORM", 34: "RING_PACKED",
    35: "IN_ORDER", 36: "ORDER_PLATFORM", 37: "SR_IOV", 38: "NOTIFICATION_DATA",
    39: "NOTIF_CONFIG_DATA", 40: "RING_RESET", 41: "ADMIN_VQ", 52: "VQ_NOTF_COAL",
    53: "NOTF_COAL", 54: "GUEST_USO4", 55: "GUEST_USO6",
    56: "HOST_USO", 57: "HASH_REPORT", 59: "GUEST_HDRLEN", 60: "RSS", 61: "RSC_EXT",
    62: "STANDBY", 63: "SPEED_DUPLEX",
}
_NEGOTIATED_RE = re.compile(rb"negotiated Virtio features: 0x([0-9a-fA-F]+)")


def feature_names(bits: int) -> set[str]:
    """The names of the set feature bits (unknown ones as BIT<n>)."""
    return {VIRTIO_FEATURE_NAMES.get(i, f"BIT{i}") for i in range(64) if bits >> i & 1}


# -- pcap files (libpcap classic format, pure Python) -------------------------

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps (what we write)
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond timestamps (what net_pcap writes)
PCAP_LINKTYPE_ETHERNET = 1
# libpcap refuses records longer than its maximum snapshot length (256 KiB).
PCAP_SNAPLEN = 262144
_PCAP_HDR = struct.Struct("<IHHiIII")
_PCAP_REC = struct.Struct("<IIII")


def write_pcap(path: str | os.PathLike[str], frames: Iterable[bytes]) -> int:
    """Write Ethernet frames to a classic pcap file; returns how many."""
    n = 0
    with open(path, "wb") as f:
        f.write(_PCAP_HDR.pack(PCAP_MAGIC, 2, 4, 0, 0, PCAP_SNAPLEN, PCAP_LINKTYPE_ETHERNET))
        for n, frame in enumerate(frames, 1):
            if len(frame) > PCAP_SNAPLEN:
                raise ValueError(f"frame of {len(frame)} B exceeds the pcap snaplen")
            f.write(_PCAP_REC.pack(n // 1_000_000, n % 1_000_000, len(frame), len(frame)))
            f.write(frame)
    return n


def read_pcap(path: str | os.PathLike[str], *, allow_truncated: bool = False) -> list[bytes]:
    """The frames of a classic pcap file (as written by net_pcap or write_pcap).

    A record shorter than its packet raises ValueError unless `allow_truncated`:
    net_pcap cuts multi-segment packets longer than 16128 B when it writes.
    """
    data = Path(path).read_bytes()
    if len(data) < _PCAP_HDR.size:
        raise ValueError(f"{path}: truncated pcap header")
    magic = struct.unpack_from("<I", data)[0]
    if magic not in (PCAP_MAGIC, PCAP_MAGIC_NS):
        raise ValueError(f"{path}: not a little-endian classic pcap (magic {magic:#x})")
    frames, off = [], _PCAP_HDR.size
    while off + _PCAP_REC.size <= len(data):
        _, _, caplen, wirelen = _PCAP_REC.unpack_from(data, off)
        off += _PCAP_REC.size
        if off + caplen > len(data):
            raise ValueError(f"{path}: truncated record at offset {off}")
        if caplen < wirelen and not allow_truncated:
            raise ValueError(f"{path}: frame {len(frames)} captured {caplen} of {wirelen} B")
        frames.append(data[off:off + caplen])
        off += caplen
    return frames


# -- test frames (198.18.0.0/15 and fd00::/8 only) --------------------------

ETH_HLEN = 14
IP4_HLEN, IP6_HLEN, TCP_HLEN, UDP_HLEN = 20, 40, 20, 8
# Largest IPv4 total length; IPv6 payload length has the same 16-bit limit.
IP_MAX_LEN = 65535
# The classic TSO super-frame: 45 full 1448-byte segments (Linux's 64 KiB GSO).
TSO_MSS = 1448
TSO_SEGMENTS = 45


def _payload(n: int, seed: int) -> bytes:
    """n bytes of a position-dependent pattern, so reordering or loss shows."""
    pattern = bytes((seed + i) & 0xFF for i in range(256))
    return (pattern * (n // 256 + 1))[:n]


def _l4_csum(v6: bool, proto: int, l4: bytes) -> int:
    src, dst = ((pktlib.IP6_A, pktlib.IP6_B) if v6 else (pktlib.IP4_A, pktlib.IP4_B))
    ps = pktlib.pseudo_sum(6 if v6 else 4, ipaddress.ip_address(src).packed,
                           ipaddress.ip_address(dst).packed, proto, len(l4))
    c = ~pktlib.ref_checksum(l4, ps) & 0xFFFF
    if proto == IPPROTO_UDP and c == 0:
        return 0xFFFF  # UDP sends a computed zero as all ones (0 means "no checksum")
    return c


def _l3_frame(v6: bool, proto: int, l4: bytes) -> bytes:
    if v6:
        return pktlib.eth(ethertype=0x86DD) + pktlib.ipv6(proto, len(l4)) + l4
    return pktlib.eth() + pktlib.ipv4(proto, len(l4)) + l4


def tcp_frame_payload(payload_len: int, *, v6: bool = False, seq: int = 1000,
                      flags: int = 0x18) -> bytes:
    """An Ethernet/IPv4-or-6/TCP frame with a correct TCP checksum."""
    l4_max = IP_MAX_LEN - (0 if v6 else IP4_HLEN)  # IPv6's length field excludes its header
    if TCP_HLEN + payload_len > l4_max:
        raise ValueError(f"TCP payload {payload_len} does not fit one IP packet")
    seg = pktlib.tcp(seq=seq, flags=flags) + _payload(payload_len, seq)
    c = _l4_csum(v6, IPPROTO_TCP, seg)
    return _l3_frame(v6, IPPROTO_TCP, seg[:16] + struct.pack("!H", c) + seg[18:])


def tcp_frame(frame_len: int = 64, *, v6: bool = False, seq: int = 1000) -> bytes:
    """A TCP frame of exactly `frame_len` bytes (no FCS): 64 and 1514 are the classics."""
    hdrs = ETH_HLEN + (IP6_HLEN if v6 else IP4_HLEN) + TCP_HLEN
    if frame_len < hdrs:
        raise ValueError(f"a TCP frame needs at least {hdrs} B")
    return tcp_frame_payload(frame_len - hdrs, v6=v6, seq=seq)


def tcp_superframe(mss: int = TSO_MSS, segments: int = TSO_SEGMENTS, *, v6: bool = False,
                   seq: int = 1000) -> bytes:
    """One TCP frame carrying `segments` * `mss` payload bytes, for TSO to cut."""
    return tcp_frame_payload(mss * segments, v6=v6, seq=seq)


def udp_frame(frame_len: int = 64, *, v6: bool = False, sport: int = 40000) -> bytes:
    """A UDP frame of exactly `frame_len` bytes with a correct UDP checksum."""
    hdrs = ETH_HLEN + (IP6_HLEN if v6 else IP4_HLEN) + UDP_HLEN
    if frame_len < hdrs:
        raise ValueError(f"a UDP frame needs at least {hdrs} B")
    body = _payload(frame_len - hdrs, sport)
    dgram = pktlib.udp(sport=sport, length=UDP_HLEN + len(body)) + body
    c = _l4_csum(v6, IPPROTO_UDP, dgram)
    return _l3_frame(v6, IPPROTO_UDP, dgram[:6] + struct.pack("!H", c) + dgram[8:])


class DpdkError(RuntimeError):
    """testpmd failed to start, did not answer in time, or said something wrong."""


@dataclasses.dataclass
class PortStats:
    """The counters of ``show port stats N``."""

    rx_packets: int = 0
    rx_bytes: int = 0
    rx_errors: int = 0
    rx_missed: int = 0
    rx_nombuf: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0

    def __sub__(self, other: PortStats) -> PortStats:
        return PortStats(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                            for f in dataclasses.fields(self)})


# Lines testpmd prints when a port could not be set up (it still shows its prompt).
_STARTUP_ERROR_RE = re.compile(r"Start ports failed|Fail to (configure|start) port|"
                               r"No probed ethernet devices|EAL: Error|Failed to attach|"
                               r"failed to initialize \S+ device")
_FWD_BLOCK_RE = re.compile(r"Forward statistics for port (\d+)\s*-+\n(.*?)\n\s*-{20,}", re.S)
_FWD_STAT_RE = re.compile(r"(RX|TX)-(packets|dropped|total):\s+(\d+)")
# Verbose dumps: "port P/queue Q: received N packets" heads a burst; each packet
# is a "src=... - length=L - nb_segs=S ..." line followed by an "ol_flags:" line.
_VERBOSE_BURST_RE = re.compile(r"port (\d+)/queue \d+: received \d+ packets")
_VERBOSE_PKT_RE = re.compile(r"\bsrc=.*? - length=(\d+) - nb_segs=(\d+)")
_STAT_RE = re.compile(r"(RX|TX)-(packets|bytes|errors|missed|nombuf):\s+(\d+)")
_PORT_NAME_RE = re.compile(rb"Infos for port (\d+)\s.*?Device name: (\S+)", re.S)
_LINK_RE = re.compile(rb"Link status: (up|down)")
_OFFLOAD_RE = re.compile(rb"Per Queue\s*:(.*?)\n\s*Per Port\s*:(.*?)\n", re.S)


@dataclasses.dataclass
class FwdStats:
    """One port's block of testpmd's forward statistics (what the engine saw)."""

    rx_packets: int = 0
    rx_dropped: int = 0
    rx_total: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0
    tx_total: int = 0


@dataclasses.dataclass(frozen=True)
class RxPacket:
    """One packet from a verbose (``set verbose 1``) dump."""

    port: int
    length: int
    nb_segs: int
    ol_flags: frozenset[str]


def dpdk_available() -> str | None:
    """None when testpmd can run here, otherwise the reason it cannot."""
    if TESTPMD is None:
        return "dpdk-testpmd not installed (apt-get install dpdk-dev)"
    if STDBUF is None:
        return "stdbuf (coreutils) not found"
    if os.geteuid() != 0:
        return "DPDK EAL needs root here (/var/run/dpdk, memfd locking)"
    return None


def unique_prefix(tag: str) -> str:
    """An EAL --file-prefix unique to this process and call."""
    unique_prefix.counter += 1  # type: ignore[attr-defined]
    return f"vn-{tag}-{os.getpid()}-{unique_prefix.counter}"  # type: ignore[attr-defined]


unique_prefix.counter = 0  # type: ignore[attr-defined]


class TestPmd:
    """One interactive dpdk-testpmd process.

    vdevs: EAL ``--vdev`` arguments, e.g. ``net_vhost0,iface=S,queues=1,client=0``.
    main_lcore: the lcore reading the command line; the other one of `lcores`
    runs forwarding (busy-polls at 100 % while started).
    app_args: extra testpmd arguments after ``--`` (``--forward-mode`` etc.).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, vdevs: Sequence[str], *, tag: str = "pmd", main_lcore: int = 0,
                 lcores: str = "0,1", mem_mb: int | None = None, mbuf_size: int | None = None,
                 total_mbufs: int | None = None, app_args: Sequence[str] = (),
                 eal_args: Sequence[str] = (), log_dir: str | os.PathLike[str] | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT, wait: bool = True) -> None:
        reason = dpdk_available()
        if reason:
            raise DpdkError(reason)
        self.prefix = unique_prefix(tag)
        argv = self._argv(vdevs, main_lcore, lcores, mem_mb, mbuf_size, total_mbufs,
                          app_args, eal_args)
        log_dir = Path(log_dir) if log_dir else DEFAULT_LOG_DIR
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.prefix}.log"
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0] (the buffer is trimmed)
        self._cond = threading.Condition()
        self._eof = False
        self._closed = False
        self._logf = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        self._logf.write(("# " + " ".join(argv) + "\n").encode())
        log.info("starting %s (log %s)", " ".join(argv), self.log_path)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError:
            self._logf.close()
            raise
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"testpmd-{self.proc.pid}")
        self._reader.start()
        self._started = False
        self._markdir = tempfile.mkdtemp(prefix="vn-pmd-mark-")
        self._marks = 0
        # Queued now, answered once the command line runs: start-up is complete.
        self.startup_marker = self._write_marker()
        if wait:
            self.wait_started(startup_timeout)

    def wait_started(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait for the first prompt and check that every port came up.

        Separate from the constructor (wait=False) because a virtio_user port in
        server mode blocks EAL's probe until its backend connects.
        """
        if self._started:
            return
        try:
            self.expect(self.startup_marker, timeout=timeout, start=0)
            self._check_startup()
        except DpdkError:
            self.close()
            raise
        self._started = True

    def _check_startup(self) -> None:
        """testpmd carries on at its prompt even when a port failed: refuse that."""
        out = self.output(0).decode(errors="replace")
        bad = [line for line in out.splitlines() if _STARTUP_ERROR_RE.search(line)]
        if bad:
            raise DpdkError(f"testpmd start-up failed: {' / '.join(bad)}; log {self.log_path}")

    def _argv(self, vdevs: Sequence[str], main_lcore: int, lcores: str, mem_mb: int | None,
              mbuf_size: int | None, total_mbufs: int | None, app_args: Sequence[str],
              eal_args: Sequence[str]) -> list[str]:
        assert TESTPMD and STDBUF
        if mbuf_size is not None and not 0 < mbuf_size <= MAX_MBUF_SIZE:
            raise ValueError(f"mbuf_size {mbuf_size} outside 1..{MAX_MBUF_SIZE}")
        big = (mbuf_size or 0) > BIG_MBUF_THRESHOLD
        mem_mb = mem_mb or (BIG_MEM_MB if big else DEFAULT_MEM_MB)
        total_mbufs = total_mbufs or (BIG_MBUFS if big else DEFAULT_MBUFS)
        eal = ["-l", lcores, "--main-lcore", str(main_lcore), "--no-huge", "-m", str(mem_mb),
               "--no-pci", f"--file-prefix={self.prefix}", *eal_args]
        for v in vdevs:
            eal += ["--vdev", v]
        # --disable-link-check: without it, each port start waits for link up
        # (up to 9 s), which a vhost port never has before its peer connects.
        app = ["-i", "--disable-link-check", f"--total-num-mbufs={total_mbufs}"]
        if mbuf_size:
            app.append(f"--mbuf-size={mbuf_size}")
        return [STDBUF, "-oL", "-eL", TESTPMD, *eal, "--", *app, *app_args]

    # -- output side -------------------------------------------------------

    def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._logf.write(data)
                self._logf.flush()
                self._buf += data
                if len(self._buf) > MAX_BUFFER:
                    cut = len(self._buf) - MAX_BUFFER // 2
                    del self._buf[:cut]
                    self._base += cut
                self._cond.notify_all()

    @property
    def position(self) -> int:
        """Absolute offset of the end of the output seen so far."""
        with self._cond:
            return self._base + len(self._buf)

    def output(self, start: int = 0, end: int | None = None) -> bytes:
        """Output between absolute offsets (as far back as still buffered)."""
        with self._cond:
            stop = None if end is None else max(0, end - self._base)
            return bytes(self._buf[max(0, start - self._base):stop])

    def expect(self, pattern: bytes | re.Pattern[bytes], *, timeout: float = CMD_TIMEOUT,
               start: int | None = None) -> tuple[int, bytes]:
        """Wait until `pattern` appears in the output after absolute offset `start`;
        returns the absolute offset where it starts and the matched bytes."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        begin = self.position if start is None else start
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf, max(0, begin - self._base))
                if m:
                    return self._base + m.start(), m.group(0)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    tail = bytes(self._buf[-2000:]).decode(errors="replace")
                    what = "exited" if self._eof else f"timed out after {timeout:.0f}s"
                    raise DpdkError(f"testpmd {what} waiting for {rx.pattern!r}; "
                                    f"log {self.log_path}; tail:\n{tail}")
                self._cond.wait(min(left, 1.0))

    # -- command side ------------------------------------------------------

    def send(self, line: str) -> int:
        """Write one command line without waiting; returns the output offset before it."""
        if "\n" in line:
            raise ValueError("one command per line")
        if not self._started and line != "quit":
            raise DpdkError("testpmd not at its prompt yet: call wait_started() first")
        return self._write(line)

    def _write(self, line: str) -> int:
        pos = self.position
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise DpdkError(f"testpmd gone: {e}; log {self.log_path}") from e
        return pos

    def _write_marker(self) -> bytes:
        """Queue a command whose answer is one unique line; returns that line.

        testpmd's prompt cannot end a command's output reliably: cmdline writes
        it one byte per write(2), so other threads' log lines land inside it
        ("testpmdVHOST_CONFIG: ...\n> ").  ``load`` of a file that cannot exist
        (in our private, empty directory) answers with one line naming it,
        written at once, after everything the previous command printed.
        """
        self._marks += 1
        path = f"{self._markdir}/absent-{self._marks}"
        self._write(f"load {path}")
        return f"{_MARKER_REPLY}{path}\n".encode()

    def cmd(self, line: str, expect: bytes | str | None = None,
            timeout: float = CMD_TIMEOUT) -> str:
        """Run one command and return what it printed (with its echo; other
        threads' log lines may be mixed in).

        With `expect` (a regex), also wait until it matches in the output that
        follows the command, which may come later (link events).
        """
        pos = self.send(line)
        end, _ = self.expect(self._write_marker(), timeout=timeout, start=pos)
        text = self.output(pos, end)
        if expect is not None:
            rx = expect.encode() if isinstance(expect, str) else expect
            self.expect(re.compile(rx), timeout=timeout, start=pos)
            text = self.output(pos)
        out = text.decode(errors="replace")
        log.debug("%s -> %s", line, out)
        return out

    def start(self) -> None:
        self.cmd("start")

    def stop(self) -> str:
        """Stop forwarding; returns testpmd's forward statistics dump."""
        return self.cmd("stop")

    def set_fwd(self, mode: str, retry: bool = False) -> None:
        """``set fwd MODE [retry]``: with retry, a full TX ring is retried, not dropped
        (see `set_tx_retry` for how long)."""
        out = self.cmd(f"set fwd {mode}{' retry' if retry else ''}")
        if f"Set {mode} packet forwarding mode" not in out:
            raise DpdkError(f"set fwd {mode} refused: {out}")

    def set_tx_retry(self, delay_us: int, retries: int) -> None:
        """How long a retry-mode engine waits for TX ring space before dropping."""
        self.cmd(f"set burst tx delay {delay_us} retry {retries}")

    def fwd_stats(self, out: str | None = None) -> dict[int, FwdStats]:
        """Per-port forward statistics, from `out` (a ``stop`` dump) or asked for now."""
        if out is None:
            out = self.cmd("show fwd stats all")
        stats = {}
        for port, body in _FWD_BLOCK_RE.findall(out):
            vals = {f"{d.lower()}_{k}": int(v) for d, k, v in _FWD_STAT_RE.findall(body)}
            stats[int(port)] = FwdStats(**vals)
        return stats

    def set_verbose(self, level: int) -> None:
        """Level 1 dumps every received packet (length, segments, ol_flags)."""
        self.cmd(f"set verbose {level}")

    def verbose_packets(self, start: int = 0) -> list[RxPacket]:
        """Packets received in verbose mode (``set verbose 1``) since offset `start`."""
        pkts: list[RxPacket] = []
        port, pending = -1, None
        for line in self.output(start).decode(errors="replace").splitlines():
            if m := _VERBOSE_BURST_RE.search(line):
                port = int(m.group(1))
            elif m := _VERBOSE_PKT_RE.search(line):
                pending = (int(m.group(1)), int(m.group(2)))
            elif pending and (flags := line.strip()).startswith("ol_flags:"):
                pkts.append(RxPacket(port, *pending, frozenset(flags.split()[1:])))
                pending = None
        return pkts

    def port_stats(self, port: int) -> PortStats:
        out = self.cmd(f"show port stats {port}")
        vals = {f"{d.lower()}_{k}": int(v) for d, k, v in _STAT_RE.findall(out)}
        if "rx_packets" not in vals:
            raise DpdkError(f"no stats for port {port}: {out}")
        return PortStats(**vals)

    def port_xstats(self, port: int) -> dict[str, int]:
        out = self.cmd(f"show port xstats {port}")
        return {k: int(v) for k, v in re.findall(r"^\s*(\w+):\s+(\d+)\s*$", out, re.M)}

    def port_ids(self) -> dict[str, int]:
        """Device name -> port id, from ``show port info all``."""
        out = self.cmd("show port info all").encode()
        return {name.decode(): int(pid) for pid, name in _PORT_NAME_RE.findall(out)}

    def link_is_up(self, port: int) -> bool:
        m = _LINK_RE.search(self.cmd(f"show port info {port}").encode())
        return bool(m and m.group(1) == b"up")

    def link_up(self, port: int, timeout: float = LINK_TIMEOUT) -> None:
        """Wait (polling ``show port info``) until the port's link is up."""
        deadline = time.monotonic() + timeout
        while not self.link_is_up(port):
            if time.monotonic() > deadline:
                raise DpdkError(f"port {port} link still down after {timeout:.0f}s; "
                                f"log {self.log_path}")
            time.sleep(0.2)

    def offload_capabilities(self, port: int, direction: str) -> set[str]:
        """``show port N rx_offload|tx_offload capabilities`` as a set of names."""
        out = self.cmd(f"show port {port} {direction}_offload capabilities")
        m = _OFFLOAD_RE.search(out.encode())
        if not m:
            raise DpdkError(f"no {direction} offload capabilities for port {port}: {out}")
        return set((m.group(1) + b" " + m.group(2)).decode().split())

    def set_tx_offloads(self, port: int, *, csum: bool = False,
                        tso_mss: int | None = None) -> None:
        """Enable checksum (TCP+UDP) and/or TSO offload on `port` for the csum engine.

        The port is stopped and started again; for virtio_user that means a new
        feature negotiation with its backend on the same socket.
        """
        self.cmd(f"port stop {port}")
        for proto in ("tcp", "udp"):
            out = self.cmd(f"csum set {proto} {'hw' if csum or tso_mss else 'sw'} {port}")
            if (csum or tso_mss) and f"{proto.upper()} checksum offload is hw" not in out:
                raise DpdkError(f"port {port} refused {proto} checksum offload: {out}")
        if tso_mss:
            out = self.cmd(f"tso set {tso_mss} {port}")
            if f"segment size for non-tunneled packets is {tso_mss}" not in out:
                raise DpdkError(f"port {port} refused TSO: {out}")
        self._port_start(port)

    def set_rx_offloads(self, port: int, offloads: Iterable[str]) -> None:
        """Turn on RX offloads by testpmd name (udp_cksum, tcp_cksum, tcp_lro) on one port.

        ``--rx-offloads`` would apply them to every port and fail on a pcap port.
        """
        self.cmd(f"port stop {port}")
        for name in offloads:
            out = self.cmd(f"port config {port} rx_offload {name} on")
            if "rror" in out or "Bad arguments" in out:
                raise DpdkError(f"port {port} refused rx_offload {name}: {out}")
        self._port_start(port)

    def _port_start(self, port: int) -> None:
        pos = self.position
        self.cmd(f"port start {port}")
        if _STARTUP_ERROR_RE.search(self.output(pos).decode(errors="replace")):
            raise DpdkError(f"port {port} failed to start: {self.output(pos)!r}")

    def negotiated_features(self) -> list[int]:
        """Every feature set a net_vhost port logged as negotiated, in order.

        rte_vhost logs each VHOST_USER_SET_FEATURES it accepts; a frontend that
        renegotiates (virtio_user after its offloads change) adds an entry.  Read
        from the log file: the in-memory buffer may have dropped early output.
        """
        return [int(h, 16) for h in _NEGOTIATED_RE.findall(self.log_path.read_bytes())]

    def run_for(self, seconds: float) -> None:
        """Forward for a fixed wall time (bounded traffic)."""
        self.start()
        time.sleep(seconds)
        self.stop()

    # -- teardown ----------------------------------------------------------

    def close(self, quit_timeout: float = QUIT_TIMEOUT,
              term_timeout: float = TERM_TIMEOUT) -> int | None:
        """Quit, then SIGTERM, then SIGKILL (by PID, each bounded); reap; remove the
        EAL runtime directory.  Returns the exit status (None: could not be ended)."""
        if self._closed:
            return self.proc.returncode
        self._closed = True
        if self.proc.poll() is None:
            with contextlib.suppress(DpdkError):
                self.send("quit")
            self._wait_or_signal(quit_timeout, term_timeout)
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        self._reader.join(timeout=term_timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._logf.close()
        if self.proc.returncode is not None:  # never pull files from under a live EAL
            shutil.rmtree(DPDK_RUNTIME_DIR / self.prefix, ignore_errors=True)
        shutil.rmtree(self._markdir, ignore_errors=True)
        return self.proc.returncode

    def _wait_or_signal(self, quit_timeout: float, term_timeout: float) -> None:
        for sig, wait in ((None, quit_timeout), (signal.SIGTERM, term_timeout),
                          (signal.SIGKILL, term_timeout)):
            if sig is not None:
                log.warning("testpmd %d: sending %s", self.proc.pid, sig.name)
                self.proc.send_signal(sig)  # a no-op once reaped: never a reused PID
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
        log.error("testpmd %d survived SIGKILL", self.proc.pid)

    def __enter__(self) -> TestPmd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the guest driver and the C peer, ready for vionet tests and benches ----

# Addresses the csum engine writes into what it forwards (it rewrites both MACs):
# the virtio_user port gets MAC_A and its peer is MAC_B, as in the pcap frames.
GUEST_MAC = ":".join(f"{b:02x}" for b in pktlib.MAC_A)
PEER_MAC = ":".join(f"{b:02x}" for b in pktlib.MAC_B)
# virtio_user with server=1 prints this, then blocks EAL's probe until a backend connects.
_VU_LISTENING = rb"waiting for client connection"
# Ports inside a VirtioUser testpmd: the vdev order fixes them.
VU_PORT, PCAP_PORT = 0, 1
# How long the forwarding engine waits for a slow backend to free ring space
# before it drops a burst: 100 us x 10000 = 1 s.
TX_RETRY_DELAY_US, TX_RETRY_NUM = 100, 10000
# Progress polling while waiting for counters.
POLL_INTERVAL = 0.1
# A generated send file never grows beyond this (count x frame size).
MAX_SEND_FILE_BYTES = 512 << 20
# Without a `drained` check, how long a sending guest stays after its last frame
# is queued, so the backend can take what is still in the ring.
TX_LINGER = 1.0
TRAFFIC_TIMEOUT = 60.0


@dataclasses.dataclass
class TrafficStats:
    """What one VirtioUser run saw on its virtio_user port."""

    port: PortStats  # the virtio_user port's counters
    fwd: FwdStats  # the engine's view of that port: TX-dropped = ring stayed full
    sent_from_pcap: int  # frames read from the send file
    frames: list[bytes]  # frames received from the backend (the capture file)
    packets: list[RxPacket]  # with verbose: per received packet length/segments/ol_flags
    complete: bool  # the awaited count was reached before the timeout
    elapsed: float
    log_path: Path


def virtio_user_vdev(sock_path: str | os.PathLike[str], *, server: bool = False,
                     packed: bool = False, queue_size: int | None = None,
                     mac: str = GUEST_MAC) -> str:
    """The --vdev string of a one-queue-pair virtio_user port on `sock_path`."""
    v = f"net_virtio_user0,path={sock_path},queues=1,mac={mac}"
    if server:
        v += ",server=1"
    if packed:
        v += ",packed_vq=1"
    if queue_size:
        v += f",queue_size={queue_size}"
    return v


def repeat_pcap(src: str | os.PathLike[str], dst: str | os.PathLike[str], count: int) -> int:
    """Write `count` frames cycling through those of `src` into `dst`."""
    frames = read_pcap(src)
    if not frames:
        raise ValueError(f"{src}: no frames to repeat")
    sizes = [len(f) for f in frames]
    full, rest = divmod(count, len(frames))
    if full * sum(sizes) + sum(sizes[:rest]) > MAX_SEND_FILE_BYTES:
        raise ValueError(f"{count} frames of {src} exceed {MAX_SEND_FILE_BYTES} B")
    return write_pcap(dst, (frames[i % len(frames)] for i in range(count)))


def _remove_stale_socket(path: str | os.PathLike[str]) -> None:
    """virtio_user's server mode will not bind over an existing path; a leftover
    socket from an earlier run is removed, anything else is an error."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise DpdkError(f"{path} exists and is not a socket")
        os.unlink(path)


class VirtioUser:
    """DPDK's virtio_user guest driver on a vhost-user socket, fed and drained by pcap.

    Port 0 is virtio_user; port 1 is a net_pcap port that reads `send_pcap`
    (frames the guest transmits, each exactly once, or in a loop until stopped
    with `repeat`, which needs an mbuf_size above the largest frame: net_pcap's
    infinite_rx refuses multi-segment mbufs) and writes what the guest
    receives to a capture file.  Forwarding is ``io`` (bytes untouched) unless
    `csum`/`tso_mss` ask for TX offloads: then the ``csum`` engine marks frames
    for checksum offload / TSO (and rewrites MACs to GUEST_MAC -> PEER_MAC and
    recomputes checksums of frames going the other way, to the capture).
    `queue_size`: entries per virtqueue (virtio_user's default is 256).

    Usage: construct (with server=True the socket now listens), connect the
    backend if it is the client, `link_up()`, `start()`, then `wait_tx`/`wait_rx`,
    and `finish()` for the result (or use the `virtio_user_tx/rx` wrappers).
    """

    def __init__(self, sock_path: str | os.PathLike[str], *,
                 send_pcap: str | os.PathLike[str] | None = None, repeat: bool = False,
                 capture: bool = True,
                 server: bool = False, packed: bool = False, csum: bool = False,
                 tso_mss: int | None = None, rx_offloads: Sequence[str] = (),
                 verbose: bool = False,
                 mbuf_size: int | None = None, main_lcore: int = 1,
                 log_dir: str | os.PathLike[str] | None = None,
                 queue_size: int | None = None) -> None:
        if server:
            _remove_stale_socket(sock_path)
        self._tmp = tempfile.TemporaryDirectory(prefix="vn-vu-")
        work = Path(self._tmp.name)
        if send_pcap is None:
            send_pcap = work / "empty.pcap"
            write_pcap(send_pcap, [])
        self.capture_path = work / "capture.pcap" if capture else None
        self.sock_path, self.server = sock_path, server
        self.csum, self.tso_mss, self.verbose = csum, tso_mss, verbose
        self.rx_offloads = tuple(rx_offloads)
        pcap = f"net_pcap0,rx_pcap={send_pcap},tx_pcap={self.capture_path or '/dev/null'}"
        if repeat:  # loop over the file for ever; frames must fit one mbuf each
            pcap += ",infinite_rx=1"
        app = ["--no-flush-rx",  # else start drains the pcap before forwarding it
               f"--eth-peer={VU_PORT},{PEER_MAC}"]
        try:
            self.pmd = TestPmd([virtio_user_vdev(sock_path, server=server, packed=packed,
                                                 queue_size=queue_size),
                                pcap], tag="vu", main_lcore=main_lcore, mbuf_size=mbuf_size,
                               app_args=app, log_dir=log_dir, wait=not server)
        except BaseException:
            self._tmp.cleanup()
            raise
        try:
            if server:  # probe blocks until the backend connects: wait for the socket
                listening = re.compile(_VU_LISTENING + b"|" + re.escape(self.pmd.startup_marker))
                _, what = self.pmd.expect(listening, timeout=STARTUP_TIMEOUT, start=0)
                if what == self.pmd.startup_marker:  # it did not block: a probe error
                    self.pmd.wait_started()
        except BaseException:
            self.pmd.close()
            self._tmp.cleanup()
            raise
        self._t0 = time.monotonic()
        self._verbose_from = 0
        self._done = False

    def link_up(self, timeout: float = LINK_TIMEOUT) -> None:
        """Wait for testpmd to be up (server mode: the backend connected) and the link."""
        self.pmd.wait_started(timeout)
        self.pmd.link_up(VU_PORT, timeout)

    def start(self) -> None:
        """Apply offloads (renegotiating with the backend) and start forwarding."""
        if self.rx_offloads:
            self.pmd.set_rx_offloads(VU_PORT, self.rx_offloads)
        if self.csum or self.tso_mss:
            self.pmd.set_tx_offloads(VU_PORT, csum=self.csum, tso_mss=self.tso_mss)
        self.pmd.set_fwd("csum" if self.csum or self.tso_mss else "io", retry=True)
        self.pmd.set_tx_retry(TX_RETRY_DELAY_US, TX_RETRY_NUM)
        if self.verbose:
            self.pmd.set_verbose(1)
        self._verbose_from = self.pmd.position
        self._t0 = time.monotonic()
        self.pmd.start()

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll `done` (bounded); e.g. until the backend counted every frame."""
        return self._wait(done, timeout)

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def wait_tx(self, count: int, timeout: float = TRAFFIC_TIMEOUT) -> bool:
        """Until `count` frames were read from the send file and each was either
        queued on virtio_user or dropped (ring full past the retries)."""
        def done() -> bool:
            if self.pmd.port_stats(PCAP_PORT).rx_packets < count:
                return False
            fwd = self.pmd.fwd_stats().get(VU_PORT, FwdStats())
            return fwd.tx_packets + fwd.tx_dropped >= count
        return self._wait(done, timeout)

    def wait_rx(self, expected: int, timeout: float = TRAFFIC_TIMEOUT) -> bool:
        """Until virtio_user has received at least `expected` packets."""
        return self._wait(lambda: self.pmd.port_stats(VU_PORT).rx_packets >= expected,
                          timeout)

    def finish(self, complete: bool = True) -> TrafficStats:
        """Stop forwarding, collect the counters, quit testpmd, read the capture."""
        out = self.pmd.stop()
        elapsed = time.monotonic() - self._t0
        fwd = self.pmd.fwd_stats(out).get(VU_PORT, FwdStats())
        port = self.pmd.port_stats(VU_PORT)
        sent = self.pmd.port_stats(PCAP_PORT).rx_packets
        packets = self.pmd.verbose_packets(self._verbose_from) if self.verbose else []
        self.close()  # flushes the capture file
        frames = read_pcap(self.capture_path) if self.capture_path else []
        return TrafficStats(port, fwd, sent, frames, [p for p in packets if p.port == VU_PORT],
                            complete, elapsed, self.pmd.log_path)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self.pmd.close()

    def cleanup(self) -> None:
        """Close; remove the work directory and (server mode) the socket virtio_user
        leaves behind."""
        self.close()
        self._tmp.cleanup()
        if self.server:
            _remove_stale_socket(self.sock_path)

    def __enter__(self) -> VirtioUser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def virtio_user_tx(sock_path: str | os.PathLike[str], frames_pcap: str | os.PathLike[str],
                   count: int | None = None, tso_mss: int | None = None,
                   timeout: float = TRAFFIC_TIMEOUT, *, csum: bool = False,
                   server: bool = False, packed: bool = False,
                   on_ready: Callable[[], None] | None = None, mbuf_size: int | None = None,
                   drained: Callable[[], bool] | None = None,
                   log_dir: str | os.PathLike[str] | None = None) -> TrafficStats:
    """Transmit the frames of `frames_pcap` (cycled up to `count`) as a guest would.

    The backend must be listening on `sock_path` (or, with server=True, connect
    to it from `on_ready`, which runs once the socket listens).  With `tso_mss`,
    TCP frames larger than it go out as GSO (TSO) with NEEDS_CSUM; with `csum`,
    as NEEDS_CSUM.  Once every frame is queued (or dropped) the guest stays
    until `drained()` says the backend has them all (bounded by `timeout`), or
    for TX_LINGER without it: a guest that quits takes what is still in its
    ring with it.  `complete` is False if either wait ran out.
    """
    with tempfile.TemporaryDirectory(prefix="vn-tx-") as work:
        send, n = Path(frames_pcap), len(read_pcap(frames_pcap))
        if count is not None and count != n:
            send = Path(work) / "send.pcap"
            n = repeat_pcap(frames_pcap, send, count)
        with VirtioUser(sock_path, send_pcap=send, capture=False, server=server,
                        packed=packed, csum=csum, tso_mss=tso_mss, log_dir=log_dir,
                        mbuf_size=mbuf_size) as vu:
            if on_ready:
                on_ready()
            vu.link_up()
            vu.start()
            deadline = time.monotonic() + timeout
            queued = vu.wait_tx(n, timeout)
            if drained is None:
                time.sleep(TX_LINGER)
                return vu.finish(queued)
            return vu.finish(queued and vu._wait(drained, deadline - time.monotonic()))


def virtio_user_rx(sock_path: str | os.PathLike[str], expected: int,
                   timeout: float = TRAFFIC_TIMEOUT, *, server: bool = False,
                   packed: bool = False, rx_offloads: Sequence[str] = (), verbose: bool = False,
                   on_ready: Callable[[], None] | None = None, mbuf_size: int | None = None,
                   log_dir: str | os.PathLike[str] | None = None) -> TrafficStats:
    """Receive as a guest until `expected` packets arrived (or timeout).

    `on_ready` runs once the link is up and forwarding runs: make the backend
    send from there.  The received frames come back byte-exact (io forwarding
    into a capture file); `verbose` adds per-packet ol_flags (checksum/LRO state).
    `rx_offloads` are testpmd names (RX_OFFLOADS_ALL): with udp_cksum/tcp_cksum
    the guest negotiates GUEST_CSUM, with tcp_lro GUEST_TSO4/6 too.
    """
    with VirtioUser(sock_path, server=server, packed=packed, rx_offloads=rx_offloads,
                    verbose=verbose, log_dir=log_dir, mbuf_size=mbuf_size) as vu:
        vu.link_up()
        vu.start()
        if on_ready:
            on_ready()
        return vu.finish(vu.wait_rx(expected, timeout))


def vhost_vdev(sock_path: str | os.PathLike[str], *, client: bool = False,
               tso: bool = False, raw: bool = False, name: str = "net_vhost0") -> str:
    """The --vdev string of a one-queue-pair net_vhost port (DPDK's C backend).

    tso: offer HOST_TSO4/6 (net_vhost does not without it).  raw: hand packets
    over as the guest put them in the ring (legacy-ol-flags=1); by default
    rte_vhost completes NEEDS_CSUM checksums in software before the app sees them.
    """
    return (f"{name},iface={sock_path},queues=1,client={int(client)}"
            + (",tso=1" if tso else "") + (",legacy-ol-flags=1" if raw else ""))


@contextlib.contextmanager
def vhost_backend(sock_path: str | os.PathLike[str], *, client: bool = False,
                  tso: bool = False, raw: bool = False, fwd: str | None = None,
                  send_pcap: str | os.PathLike[str] | None = None,
                  capture: str | os.PathLike[str] | None = None, start: bool = True,
                  verbose: bool = False, main_lcore: int = 0, mbuf_size: int | None = None,
                  app_args: Sequence[str] = (),
                  log_dir: str | os.PathLike[str] | None = None) -> Iterator[TestPmd]:
    """DPDK's net_vhost backend on `sock_path` (port 0): the comparison peer.

    Without pcap options it counts (fwd rxonly) or generates (txonly) traffic.
    With `send_pcap` it sends those frames to the guest once, with `capture` it
    writes what the guest sent to that file (io forwarding through a pcap port
    1; use raw=True to see ring bytes, mbuf_size=65535 to capture frames over
    16128 B whole).  start=False: forwarding is set up but not started.
    """
    vdevs = [vhost_vdev(sock_path, client=client, tso=tso, raw=raw)]
    args = list(app_args)
    with tempfile.TemporaryDirectory(prefix="vn-vh-") as work:
        if send_pcap or capture:
            if send_pcap is None:
                send_pcap = Path(work) / "empty.pcap"
                write_pcap(send_pcap, [])
            vdevs.append(f"net_pcap0,rx_pcap={send_pcap},tx_pcap={capture or '/dev/null'}")
            args.append("--no-flush-rx")
            fwd = fwd or "io"
        pmd = TestPmd(vdevs, tag="vh", main_lcore=main_lcore, app_args=args,
                      mbuf_size=mbuf_size, log_dir=log_dir)
        try:
            pmd.set_fwd(fwd or "rxonly")
            if verbose:
                pmd.set_verbose(1)
            if start:
                pmd.start()
            yield pmd
        finally:
            pmd.close()


# -- what does virtio_user ask for? a recording vhost-user peer ---------------

VHOST_USER_GET_FEATURES, VHOST_USER_SET_FEATURES = 1, 2
VHOST_USER_GET_VRING_BASE, VHOST_USER_GET_PROTOCOL_FEATURES = 11, 15
VHOST_USER_VERSION, VHOST_USER_REPLY = 0x1, 0x4
_VU_HDR = struct.Struct("<III")  # request, flags, size
# Most fds one vhost-user message carries (SET_MEM_TABLE: one per region, max 8).
VHOST_USER_MAX_FDS = 8
# A vhost-user payload is at most a memory table: 8 regions of 32 B + 8 B.
VHOST_USER_MAX_PAYLOAD = 4096
PROTOCOL_FEATURES_BIT = 30


class VhostUserRecorder:
    """A minimal vhost-user backend that only records what a frontend requests.

    An instrument, not a stand-in for vionet: it answers the three requests that
    need a reply without protocol features (GET_FEATURES with `offer`,
    GET_PROTOCOL_FEATURES, GET_VRING_BASE), closes every fd it is sent and
    keeps each SET_FEATURES value, so a test can see which feature bits DPDK's
    virtio_user asks for when offered everything.  Offer without bit 30
    (PROTOCOL_FEATURES): this recorder speaks no protocol features.
    """

    def __init__(self, sock_path: str | os.PathLike[str], offer: int,
                 timeout: float = TRAFFIC_TIMEOUT) -> None:
        if offer >> PROTOCOL_FEATURES_BIT & 1:
            raise ValueError("the recorder does not implement protocol features")
        self.offer, self.timeout = offer, timeout
        self.requests: list[int] = []
        self.set_features: list[int] = []
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(os.fspath(sock_path))
        self._srv.listen(1)
        self._srv.settimeout(timeout)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="vu-recorder")
        self._thread.start()

    def _recv_exact(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk, fds, _, _ = socket.recv_fds(conn, n - len(data), VHOST_USER_MAX_FDS)
            for fd in fds:
                os.close(fd)
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self) -> None:
        try:
            conn, _ = self._srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(self.timeout)
            with contextlib.suppress(EOFError, OSError):
                while True:
                    self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        req, _, size = _VU_HDR.unpack(self._recv_exact(conn, _VU_HDR.size))
        if size > VHOST_USER_MAX_PAYLOAD:
            raise EOFError
        body = self._recv_exact(conn, size) if size else b""
        self.requests.append(req)
        flags = VHOST_USER_VERSION | VHOST_USER_REPLY
        if req == VHOST_USER_GET_FEATURES:
            conn.sendall(_VU_HDR.pack(req, flags, 8) + struct.pack("<Q", self.offer))
        elif req == VHOST_USER_GET_PROTOCOL_FEATURES:
            conn.sendall(_VU_HDR.pack(req, flags, 8) + struct.pack("<Q", 0))
        elif req == VHOST_USER_SET_FEATURES and size >= 8:
            self.set_features.append(struct.unpack_from("<Q", body)[0])
        elif req == VHOST_USER_GET_VRING_BASE and size >= 8:
            index = struct.unpack_from("<I", body)[0]
            conn.sendall(_VU_HDR.pack(req, flags, 8) + struct.pack("<II", index, 0))

    def close(self) -> None:
        self._srv.close()
        self._thread.join(self.timeout)

    def __enter__(self) -> VhostUserRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
