"""Network-namespace test harness and the kernel-as-oracle tap pair.

`NetNS` creates a named namespace (``vn-<purpose>-<pid>-<n>``) and enters it
in the *calling thread* only (setns(2) is per thread), restoring the thread's
original namespace on the way out, even on error.  Devices made inside stay
there; their file descriptors work from any namespace afterwards.

`TapPair` is the oracle of issue 2: tap A (IFF_VNET_HDR, 12-byte header) and
tap B (IFF_VNET_HDR, TUNSETOFFLOAD 0) enslaved to one bridge.  A frame written
to tap A with a virtio_net_hdr is forwarded to tap B, which can take no
offload, so the kernel completes checksums and segments on the way; tap B's
reader gets the packets a NIC would have sent.  Each write is followed by a
fence frame (same source MAC, our own EtherType and a sequence token): the
bridge forwards synchronously within the write, so the fence arriving means
every packet of the case has arrived, and no timing guess is involved.  The
deadline only bounds a broken setup.

Quiet namespace: IPv6 is disabled before any link exists (no DAD, router or
MLD solicitations), bridge netfilter is turned off (it trims padding and drops
bad IPv4 checksums), STP is off, nothing has an address; and the reader still
ignores every frame whose source MAC is not the case's.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import select
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns

from vmdnet.offload import VnetHdr
from vmdnet.tun import Tap, open_tap, set_offload

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000  # sched.h: setns(2) nstype for a network namespace
# Namespace files ip(8) and pyroute2 bind-mount named namespaces under.
NETNS_RUN_DIR = "/run/netns"
# Tap sizes: the virtio_net_hdr both taps use (VERSION_1 form, with num_buffers).
VNET_HDR_SZ = 12
# MTU of the taps and the bridge: the largest a tap takes (64 KiB - 1 minus
# its Ethernet header), so that no single-packet frame of a test is dropped by
# the bridge's MTU check.
ORACLE_MTU = 65535 - 14
# Tap B's queue (tun drops what does not fit): room for the most packets one
# write can make (gso_size 1 on a 64 KiB frame) plus the fence.
ORACLE_TXQLEN = 65536 + 64
# Largest read from tap B: a 64 KiB packet, its header, two VLAN tags.
READ_MAX = 65536 + VNET_HDR_SZ + 64
# The fence frame's EtherType: IEEE 802 "local experimental" 1.
FENCE_ETHERTYPE = 0x88B5
FENCE_MAGIC = b"vnFENCE!"
# Where fences go: the test frames' destination (pktlib.MAC_B), which no port
# ever sends from, so the bridge floods it to tap B like the case's packets.
FENCE_DST = bytes.fromhex("020000000002")
ETH_MIN_PAYLOAD = 46
# Locally administered unicast MACs the harness hands out: 02:76:6e ("vn").
MAC_PREFIX = bytes.fromhex("02766e")
DEFAULT_TIMEOUT = 5.0
# Setup: how long a fresh bridge may take before forwarding.
READY_TIMEOUT = 10.0
READY_RETRY = 0.05

_libc = ctypes.CDLL(None, use_errno=True)
_ns_counter = itertools.count()

SYSCTLS_IPV6_OFF = (
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/router_solicitations", "0"),
    ("net/ipv6/conf/default/router_solicitations", "0"),
)
# Present only when br_netfilter is loaded; per namespace since Linux 5.3.
SYSCTLS_BRIDGE_NF = (
    ("net/bridge/bridge-nf-call-iptables", "0"),
    ("net/bridge/bridge-nf-call-ip6tables", "0"),
    ("net/bridge/bridge-nf-call-arptables", "0"),
)


class OracleError(RuntimeError):
    """The oracle setup misbehaved (not a verdict about a test frame)."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def root_skip_reason() -> str | None:
    """Why namespace/tap tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


class NetNS:
    """A named network namespace the test owns; `close()` removes it."""

    def __init__(self, purpose: str):
        self.name = f"vn-{purpose}-{os.getpid()}-{next(_ns_counter)}"
        netns.create(self.name)
        self.path = os.path.join(NETNS_RUN_DIR, self.name)
        log.info("created netns %s", self.name)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with the calling thread inside this namespace."""
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                # Failing to return would leave the test runner in the wrong
                # namespace: let that error propagate over anything else.
                _setns(saved)
        finally:
            os.close(saved)

    def sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> bool:
        """Write /proc/sys/`key` inside the namespace; False if it is absent."""
        with self.entered():
            try:
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(value)
            except FileNotFoundError:
                if missing_ok:
                    return False
                raise
        return True

    def close(self) -> None:
        netns.remove(self.name)
        log.info("removed netns %s", self.name)

    def __enter__(self) -> NetNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hdr_bytes(hdr: VnetHdr | bytes) -> bytes:
    if isinstance(hdr, VnetHdr):
        return hdr.pack(VNET_HDR_SZ)
    if len(hdr) != VNET_HDR_SZ:
        raise ValueError(f"a raw header must be {VNET_HDR_SZ} bytes, not {len(hdr)}")
    return bytes(hdr)


@dataclass
class TapPair:
    """Tap A (writes, vnet hdr) → bridge → tap B (reads, no offloads)."""

    ns: NetNS
    a: Tap
    b: Tap
    bridge: str
    _macs: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _token: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    stray: int = 0          # frames from other sources seen on tap B (ignored)

    def next_mac(self) -> bytes:
        """A fresh source MAC, so a case's packets cannot be confused with any other's."""
        n = next(self._macs) & 0xFFFFFF
        return MAC_PREFIX + n.to_bytes(3, "big")

    def kernel_accepts(self, hdr: VnetHdr | bytes, frame: bytes) -> int:
        """Write hdr+frame to tap A: 0 when the kernel took it, else the errno."""
        try:
            os.write(self.a.fd, _hdr_bytes(hdr) + frame)
        except OSError as e:
            return e.errno or errno.EIO
        finally:
            self.drain()
        return 0

    def kernel_segment(self, hdr: VnetHdr | bytes, frame: bytes,
                       timeout: float = DEFAULT_TIMEOUT) -> list[bytes]:
        """The packets tap B receives for one write of hdr+frame to tap A.

        An empty list means the kernel accepted the write and dropped the
        packet.  A refused write raises OSError with the kernel's errno.
        """
        if len(frame) < 12:
            raise ValueError("frame shorter than two MAC addresses")
        src = frame[6:12]
        self.drain()
        os.write(self.a.fd, _hdr_bytes(hdr) + frame)
        token = self._write_fence(src)
        return self._collect(src, token, timeout)

    def drain(self) -> int:
        """Throw away whatever waits on either tap; return how many frames."""
        n = 0
        for tap in (self.a, self.b):
            for _ in range(ORACLE_TXQLEN + 1):      # a queue holds no more
                try:
                    os.read(tap.fd, READ_MAX)
                except BlockingIOError:
                    break
                n += 1
        return n

    def _fence(self, src: bytes, token: int) -> bytes:
        body = FENCE_MAGIC + struct.pack("!Q", token)
        return (FENCE_DST + src + struct.pack("!H", FENCE_ETHERTYPE)
                + body.ljust(ETH_MIN_PAYLOAD, b"\0"))

    def _write_fence(self, src: bytes) -> int:
        token = next(self._token)
        os.write(self.a.fd, bytes(VNET_HDR_SZ) + self._fence(src, token))
        return token

    def _is_fence(self, frame: bytes, token: int) -> bool:
        return (frame[12:14] == struct.pack("!H", FENCE_ETHERTYPE)
                and frame[14:30] == FENCE_MAGIC + struct.pack("!Q", token))

    def _read_b(self, deadline: float) -> bytes | None:
        """One frame from tap B (its vnet header checked and stripped), None at the deadline."""
        while True:
            try:
                raw = os.read(self.b.fd, READ_MAX)
                break
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self.b.fd], [], [], left)
        hdr = VnetHdr.unpack(raw, VNET_HDR_SZ)
        if hdr.gso_type != 0 or hdr.flags & 1:
            raise OracleError(f"tap B (offload 0) handed out an offloaded packet: {hdr}")
        return raw[VNET_HDR_SZ:]

    def _collect(self, src: bytes, token: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        while True:
            frame = self._read_b(deadline)
            if frame is None:
                raise OracleError(f"fence {token} not seen on tap B within {timeout}s")
            if frame[6:12] != src:
                self.stray += 1
                log.debug("ignoring stray frame from %s", frame[6:12].hex())
                continue
            if self._is_fence(frame, token):
                return out
            out.append(frame)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once a fence crosses the bridge (ports forwarding, carrier up)."""
        src = self.next_mac()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            token = self._write_fence(src)
            try:
                self._collect(src, token, READY_RETRY)
                return
            except OracleError:
                continue
        raise OracleError(f"bridge {self.bridge} did not forward within {timeout}s")

    def close(self) -> None:
        self.a.close()
        self.b.close()


def _quiet_namespace(ns: NetNS) -> None:
    for key, value in SYSCTLS_IPV6_OFF:
        ns.sysctl(key, value)
    for key, value in SYSCTLS_BRIDGE_NF:
        if not ns.sysctl(key, value, missing_ok=True):
            log.info("%s absent in %s (br_netfilter not loaded): nothing to turn off",
                     key, ns.name)


def _build_bridge(bridge: str, taps: list[Tap]) -> None:
    """Inside the namespace: bridge + taps, all up, MTU and queue sized for tests."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=bridge, kind="bridge", br_stp_state=0)
        br = ipr.link_lookup(ifname=bridge)[0]
        for tap in taps:
            idx = ipr.link_lookup(ifname=tap.name)[0]
            ipr.link("set", index=idx, mtu=ORACLE_MTU, txqlen=ORACLE_TXQLEN)
            ipr.link("set", index=idx, master=br)
            ipr.link("set", index=idx, state="up")
        ipr.link("set", index=br, mtu=ORACLE_MTU, state="up")


def open_tap_pair(purpose: str = "oracle") -> TapPair:
    """Create the namespace and the oracle pair; on any failure undo everything."""
    ns = NetNS(purpose)
    taps: list[Tap] = []
    try:
        _quiet_namespace(ns)
        with ns.entered():
            taps.append(open_tap("vnA", vnet_hdr_sz=VNET_HDR_SZ, nonblock=True))
            taps.append(open_tap("vnB", vnet_hdr_sz=VNET_HDR_SZ, nonblock=True))
            set_offload(taps[1].fd, 0)
            _build_bridge("vnbr0", taps)
        pair = TapPair(ns=ns, a=taps[0], b=taps[1], bridge="vnbr0")
        pair.wait_ready()
        return pair
    except BaseException:
        for tap in taps:
            tap.close()
        ns.close()
        raise


@contextmanager
def tap_pair(purpose: str = "oracle") -> Iterator[TapPair]:
    """The oracle pair for the body; taps and namespace removed afterwards."""
    pair = open_tap_pair(purpose)
    try:
        yield pair
    finally:
        pair.close()
        pair.ns.close()
