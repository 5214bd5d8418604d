"""The parent's side of one vionet child: spawn it, answer its tap requests, ask for counters.

A vionet is exec'd (python -m vmdnet.vionet.main) as root with one fd besides
stdio: its end of a SOCK_SEQPACKET privsep channel.  The parent then sends,
with SCM_RIGHTS over that channel, the tap (VIONET_TAP: its name and vnet
header size, once, first) and each VMM connection it accepts on the
interface's socket (VHOST_USER_FD, any time; the vionet replaces its current
connection with it), as vmd hands its vionet the tap and then the VM.  The
vionet receives the tap, enters its sandbox and only then reads a byte from
the guest; from then on the only privileged thing it can get done is what it
asks for here, and here every request is checked against what the
interface's configuration allows.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from vmdnet.config.validate import (
    InvalidValue,
    format_lladdr,
    valid_ifname,
    valid_lladdr,
    valid_local_prefix,
    valid_rsc_interval,
)
from vmdnet.daemon.netlink import TAP_VNET_HDR_SZ
from vmdnet.daemon.procs import stop_process
from vmdnet.privsep.channel import Channel, socketpair
from vmdnet.privsep.codec import (
    ACCEPTS,
    PARENT_ID,
    VNET_HDR_SIZES,
    LogVerbose,
    Message,
    Peer,
    PrivsepError,
    Result,
    Stats,
    StatsRequest,
    TapSetOffload,
    TapSetVnetHdrSz,
    VhostUserFd,
    VionetTap,
)
from vmdnet.privsep.sandbox import Ids
from vmdnet.tun import caps as tcaps
from vmdnet.tun import linux as tun

log = logging.getLogger(__name__)

# What the parent accepts from a vionet (the codec refuses everything else):
#   TAP_SET_OFFLOAD       checked against offload_ceiling(), then TUNSETOFFLOAD
#   TAP_SET_VNET_HDR_SZ   one of VNET_HDR_SIZES, then TUNSETVNETHDRSZ
#   STATS                 only as the answer to our STATS_REQUEST
ACCEPTED_FROM_VIONET = ACCEPTS[Peer.PARENT][Peer.VIONET]

# Every GUEST_* bit set: the most a guest could negotiate, for the offload ceiling.
ALL_FEATURE_BITS = 2**64 - 1
# A vionet answers STATS_REQUEST from its privsep thread at once; a second
# covers a loaded machine without stalling the control socket for long.
STATS_TIMEOUT_S = 2.0
# SIGTERM first; a vionet that ignores it for this long is killed.
STOP_GRACE_S = 5.0
# A local interface is a /31: the host end (router, DHCP server) and the guest's.
LOCAL_PREFIXLEN = 31


def offload_ceiling(offloads: frozenset[str]) -> int:
    """The TUN_F_* flags a tap with these configured offloads may ever be given."""
    return tcaps.tun_offload_flags(ALL_FEATURE_BITS, tcaps.TapCaps(vnet_hdr=True,
                                                                   offloads=offloads))


@dataclass(frozen=True)
class VionetSpec:
    """Everything a vionet child is started with."""

    iface_id: int
    tap_fd: int
    offloads: frozenset[str]
    mac: bytes
    sandbox: Ids
    chroot: str
    log_path: str
    verbose: bool = False
    locked: bool = False
    # A local interface: the host end of its /31 (router); the guest gets the other end.
    local_addr: ipaddress.IPv4Interface | None = None
    rsc_interval_us: int | None = None
    # The tap as VIONET_TAP names it: its interface name and virtio_net_hdr size.
    tap_name: str = ""
    vnet_hdr_sz: int = TAP_VNET_HDR_SZ


@dataclass
class VionetProc:
    """One running vionet and our end of its privsep channel."""

    spec: VionetSpec
    proc: subprocess.Popen[bytes]
    channel: Channel
    started: float = field(default_factory=time.monotonic)
    refused: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    # --- requests from the child -------------------------------------------------------
    def handle(self, msgs: list[Message]) -> list[Stats]:
        """Answer tap requests; return the STATS frames for whoever asked."""
        stats = []
        for m in msgs:
            if isinstance(m.body, Stats):
                stats.append(m.body)
                continue
            err = self._tap_request(m)
            self.channel.send(Result(err), seq=m.seq)
        return stats

    def _tap_request(self, m: Message) -> int:
        body = m.body
        try:
            if isinstance(body, TapSetOffload):
                ceiling = offload_ceiling(self.spec.offloads)
                if body.flags & ~ceiling:
                    self.refused += 1
                    log.warning("interface %d: vionet asked for TUNSETOFFLOAD %#x, outside "
                                "the configured %#x", self.spec.iface_id, body.flags, ceiling)
                    return errno.EPERM
                tun.set_offload(self.spec.tap_fd, body.flags)
            elif isinstance(body, TapSetVnetHdrSz) and body.size in VNET_HDR_SIZES:
                tun.set_vnet_hdr_sz(self.spec.tap_fd, body.size)
            else:
                return errno.EINVAL
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    # --- our requests ----------------------------------------------------------------
    def query_stats(self, timeout: float = STATS_TIMEOUT_S) -> dict[str, Any] | None:
        """The child's counters, or None if it does not answer in time.

        Tap requests arriving meanwhile are answered as usual.
        """
        try:
            seq = self.channel.send(StatsRequest())
        except OSError:
            return None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.channel], [], [], left)
            if not ready:
                break
            try:
                msgs = self.channel.recv()
            except (PrivsepError, OSError) as exc:
                log.warning("vionet %d: %s", self.pid, exc)
                return None
            if msgs is None:
                return None
            answered = [m for m in msgs if isinstance(m.body, Stats) and m.seq == seq]
            self.handle([m for m in msgs if not isinstance(m.body, Stats)])
            if answered:
                body = answered[0].body
                assert isinstance(body, Stats)
                return body.counters
        return None

    def send_connection(self, conn: socket.socket) -> None:
        """Hand CONN (an accepted vhost-user connection) to the vionet; OSError if the
        channel is gone.  The caller closes its copy: the VMM then sees the
        connection drop when the vionet ends it or dies."""
        self.channel.send(VhostUserFd(), fd=conn.fileno())

    def set_verbose(self, verbose: bool) -> None:
        try:
            self.channel.send(LogVerbose(verbose))
        except OSError as exc:
            log.debug("vionet %d: %s", self.pid, exc)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after STOP_GRACE_S; reap; close our channel end."""
        stop_process(self.proc, STOP_GRACE_S)
        self.channel.close()


def dhcp_arg(host: ipaddress.IPv4Interface) -> str:
    """vionet's --dhcp for a local interface whose host end is HOST: GUEST/31,HOST."""
    net = valid_local_prefix(str(host.network))
    if net.prefixlen != LOCAL_PREFIXLEN or host.ip != net.network_address:
        raise InvalidValue(f"local interface address {host} is not the first of a "
                           f"/{LOCAL_PREFIXLEN}")
    guest = net.network_address + 1
    return f"{guest}/{LOCAL_PREFIXLEN},{host.ip}"


def config_args(spec: VionetSpec) -> list[str]:
    """The arguments the interface's configuration gives vionet, each value passed
    through the configuration's own validator (InvalidValue: not started)."""
    argv = ["--mac", format_lladdr(valid_lladdr(spec.mac))]
    if spec.locked:
        argv.append("--locked")
    if spec.local_addr is not None:
        argv += ["--dhcp", dhcp_arg(spec.local_addr)]
    if spec.rsc_interval_us is not None:
        argv += ["--rsc", str(valid_rsc_interval(spec.rsc_interval_us))]
    return argv


def spawn(spec: VionetSpec) -> VionetProc:
    """Fork and exec a vionet for SPEC's interface and send it its tap.

    It serves no VMM until send_connection() gives it one.  OSError (nothing
    left running) if the child cannot be started or given its tap.
    """
    extra = config_args(spec)         # validated before anything is created
    tap = VionetTap(valid_ifname(spec.tap_name), spec.vnet_hdr_sz)
    ours, theirs = socketpair()
    argv = [sys.executable, "-m", "vmdnet.vionet.main",
            "--privsep-fd", str(theirs.fileno()), "--privsep-id", str(spec.iface_id),
            "--sandbox", f"{spec.sandbox.uid}:{spec.sandbox.gid}:{spec.chroot}",
            "--offloads", ",".join(sorted(spec.offloads)) or "none",
            *extra]
    if spec.verbose:
        argv.append("-v")
    try:
        with open(spec.log_path, "ab") as logf:
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),),
                                    stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    v = VionetProc(spec, proc, Channel(ours, Peer.PARENT, Peer.VIONET, PARENT_ID))
    try:
        v.channel.send(tap, fd=spec.tap_fd)
    except (OSError, PrivsepError) as exc:
        v.stop()
        raise OSError(f"vionet {proc.pid}: cannot send the tap: {exc}") from exc
    log.info("vionet %d started for interface %d (tap %s)", proc.pid, spec.iface_id,
             spec.tap_name)
    return v
