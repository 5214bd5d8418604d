"""vmdnet-vionet: serve one virtio-net device over vhost-user, backed by a tap.

Standalone use (like passt): it opens the tap itself (root or CAP_NET_ADMIN)
and serves the VMM on a unix socket:

    vmdnet-vionet --socket /run/vn0.sock --tap vn0
    qemu-system-x86_64 ... -chardev socket,id=c0,path=/run/vn0.sock \\
        -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0

Under vmdnetd (privilege separation) vionet is exec'd with its privsep
channel only (--privsep-fd): the parent sends the tap fd first, then every
VMM connection it accepts, each by SCM_RIGHTS (see privsep_tap() and
Control.offer_connection() below).
Counters are printed on SIGUSR1 and at exit; --stats-json also writes them.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import queue
import selectors
import signal
import socket
import sys
import time
from typing import Any

from tabulate import tabulate

from vmdnet.config import limits
from vmdnet.config.validate import InvalidValue, valid_lladdr
from vmdnet.privsep.child import EXIT_PARENT_GONE, ParentLink
from vmdnet.privsep.codec import NO_VNET_HDR, PrivsepError, VionetTap
from vmdnet.privsep.sandbox import Ids, enter_sandbox
from vmdnet.tun import caps as tcaps
from vmdnet.vhost_user import socket as vsock
from vmdnet.vhost_user.capabilities import print_capabilities
from vmdnet.vhost_user.protocol import VhostUserError
from vmdnet.vionet.device import DEFAULT_TAP_HDR_SZ, Vionet
from vmdnet.vionet.dhcp import DhcpConfig
from vmdnet.vionet.worker import set_nonblocking

log = logging.getLogger("vmdnet.vionet")

# How often the control loop wakes with nothing to do, to notice broken queues.
REAP_INTERVAL_S = 1.0


class LocalTap:
    """Standalone mode: vionet issues the tap ioctls itself."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def set_offload(self, flags: int) -> None:
        from vmdnet.tun import linux
        linux.set_offload(self.fd, flags)

    def set_vnet_hdr_sz(self, size: int) -> None:
        from vmdnet.tun import linux
        linux.set_vnet_hdr_sz(self.fd, size)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vmdnet-vionet", description=__doc__.splitlines()[0])
    p.add_argument("--socket", help="vhost-user unix socket path")
    p.add_argument("--connect", action="store_true",
                   help="connect to a VMM listening at --socket (default: listen)")
    p.add_argument("--fd", type=int, help="an already connected vhost-user socket fd")
    p.add_argument("--tap", help="tap interface to create or attach to")
    p.add_argument("--tap-fd", type=int, help="an open tap fd (inherited at exec)")
    p.add_argument("--no-vnet-hdr", action="store_true",
                   help="open the tap without IFF_VNET_HDR: all offloads done in C")
    p.add_argument("--offloads", default="all",
                   help="offloads the tap may take, e.g. csum,tso4 (rest in software)")
    p.add_argument("--mac", help="the guest's MAC address (lladdr): reported, and enforced "
                                 "with --locked; --dhcp serves it")
    p.add_argument("--locked", action="store_true",
                   help="locked lladdr: drop guest frames from another source MAC (or ARP "
                        "with another sender) and unicast to the guest for another MAC")
    p.add_argument("--dhcp", metavar="ADDR/PREFIXLEN,ROUTER",
                   help="answer the guest's DHCP: lease it ADDR, with ROUTER as router and "
                        "server (a local interface), e.g. 198.18.4.1/31,198.18.4.0")
    p.add_argument("--rsc", nargs="?", type=int, const=limits.RSC_INTERVAL_DEFAULT_US,
                   metavar="INTERVAL_US",
                   help="coalesce received TCP for the guest (RSC), holding at most "
                        "INTERVAL_US microseconds (default 300)")
    p.add_argument("--discard", action="store_true",
                   help="drop guest TX after processing instead of writing (benchmarks)")
    p.add_argument("--stats-json", help="write counters as JSON here on SIGUSR1 and at exit")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user back-end capabilities (JSON) and exit")
    p.add_argument("-v", "--verbose", action="count", default=0)
    # Under vmdnetd (privilege separation): see privsep_setup() below.
    p.add_argument("--privsep-fd", type=int,
                   help="SOCK_SEQPACKET channel to vmdnetd: the tap and VMM connections "
                        "arrive over it, tap ioctls go through it")
    p.add_argument("--privsep-id", type=int, default=0, help="our id on that channel")
    p.add_argument("--sandbox", metavar="UID:GID:DIR",
                   help="before serving the guest: chroot DIR, become UID:GID, seccomp")
    args = p.parse_args(argv)
    if args.print_capabilities:
        return args
    # Under vmdnetd the tap and the connections come over the privsep channel.
    if not (args.socket or args.fd is not None or args.privsep_fd is not None):
        p.error("--socket or --fd is required")
    if not (args.tap or args.tap_fd is not None or args.privsep_fd is not None):
        p.error("--tap or --tap-fd is required")
    try:
        args.offload_set = tcaps.parse_offloads(args.offloads)
    except ValueError as exc:
        p.error(str(exc))
    _check_lladdr_args(p, args)
    if args.rsc is not None and not (limits.RSC_INTERVAL_MIN_US <= args.rsc
                                     <= limits.RSC_INTERVAL_MAX_US):
        p.error(f"--rsc interval must be in {limits.RSC_INTERVAL_MIN_US}.."
                f"{limits.RSC_INTERVAL_MAX_US} us")
    return args


def _check_lladdr_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--mac through the config's validator; --locked and --dhcp need it."""
    args.lladdr = None
    args.dhcp_config = None
    if args.mac is not None:
        try:
            args.lladdr = valid_lladdr(args.mac)
        except InvalidValue as exc:
            p.error(f"--mac: {exc}")
    if (args.locked or args.dhcp) and args.lladdr is None:
        p.error("--locked and --dhcp need --mac")
    if args.dhcp:
        try:
            args.dhcp_config = DhcpConfig.parse(args.dhcp, args.lladdr)
        except ValueError as exc:
            p.error(f"--dhcp: {exc}")


def open_tap(args: argparse.Namespace) -> int:
    if args.tap_fd is not None:
        return args.tap_fd
    from vmdnet.tun import linux
    tap = linux.open_tap(args.tap, vnet_hdr=not args.no_vnet_hdr)
    return tap.fd


def stats_table(stats: dict[str, Any]) -> str:
    """The counters as a two-column table, nested keys joined with dots."""
    rows: list[tuple[str, Any]] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), sub)
        elif isinstance(v, list):
            rows.append((prefix, ",".join(str(x) for x in v)))
        elif v not in (0, None) or prefix.count(".") < 2:
            rows.append((prefix, v))

    walk("", stats)
    return tabulate(rows, headers=["counter", "value"])


class Control:
    """The control loop: vhost-user socket, signals, reconnects."""

    def __init__(self, args: argparse.Namespace, dev: Vionet) -> None:
        self.args = args
        self.dev = dev
        self.sel = selectors.DefaultSelector()
        self.listener: vsock.Listener | None = None
        self.listening = False          # the listener is in the selector
        self.conn: vsock.Connection | None = None
        # --connect: when to try the VMM's socket again, and the next backoff.
        self.retry_at: float | None = None
        self.retry_delay = vsock.CONNECT_BACKOFF_FIRST
        self.running = True
        self.sig_r, self.sig_w = socket.socketpair()
        self.sig_r.setblocking(False)
        self.sig_w.setblocking(False)
        # Under vmdnetd: connections from the privsep reader thread, and a socketpair
        # whose one byte wakes this loop for them (made now: socketpair() is not in
        # the sandbox's allowlist).
        self.offered: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.offer_r, self.offer_w = socket.socketpair()
        self.offer_r.setblocking(False)
        self.offer_w.setblocking(False)

    def report(self) -> None:
        stats = self.dev.stats()
        sys.stderr.write(stats_table(stats) + "\n")
        sys.stderr.flush()
        if self.args.stats_json:
            tmp = self.args.stats_json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(stats, f, indent=1, sort_keys=True)
            os.replace(tmp, self.args.stats_json)

    def _signals(self) -> None:
        signal.set_wakeup_fd(self.sig_w.fileno())
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(s, lambda *_: None)
        self.sel.register(self.sig_r, selectors.EVENT_READ, "signal")

    def _on_signal(self) -> None:
        for b in self.sig_r.recv(64):
            if b == signal.SIGUSR1:
                self.report()
            elif b in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.running = False

    def _watch_listener(self, on: bool) -> None:
        """Watch the listening socket only while no VMM is attached.

        One VMM at a time: a second one waits in the backlog.  Watching the
        listener meanwhile would wake the loop at once, again and again, for a
        connection it must not accept (a busy loop any local peer could cause).
        """
        if self.listener is None or on == self.listening:
            return
        if on:
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        else:
            self.sel.unregister(self.listener)
        self.listening = on

    def _attach(self, conn: vsock.Connection) -> None:
        self._watch_listener(False)
        self.conn = conn
        conn.sock.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, "conn")
        self.dev.connected()
        log.info("VMM connected")

    def _detach(self) -> None:
        if not self.conn:
            return
        self.sel.unregister(self.conn)
        self.conn.close()
        self.conn = None
        self.dev.disconnected()
        self._watch_listener(True)
        log.info("VMM disconnected; waiting for it to come back")
        if self.args.connect and self.running:
            self._connect()

    def offer_connection(self, fd: int) -> None:
        """A VMM connection from the parent (called on the privsep reader thread)."""
        self.offered.put(fd)
        try:
            self.offer_w.send(b"c")
        except BlockingIOError:
            pass                    # a wake-up is pending already: it takes this one too

    def _on_offered(self) -> None:
        """Serve the newest offered connection, replacing the current one.

        The VMM restarted or reconnected: the old connection is ended as on its
        own disconnect (queues stopped, guest memory unmapped, its fds closed)
        before the new one is read.  Connections overtaken by a newer one in the
        same wake-up are closed unread.
        """
        try:
            self.offer_r.recv(4096)
        except BlockingIOError:
            pass
        fds = []
        while not self.offered.empty():
            fds.append(self.offered.get_nowait())
        if not fds:
            return
        for stale in fds[:-1]:
            os.close(stale)
        if self.conn is not None:
            log.info("a new VMM connection from the parent replaces the current one")
            self._detach()
        self._attach(vsock.from_fd(fds[-1]))

    def _connect(self) -> None:
        """Try the VMM's socket once; while nobody listens, retry from the loop.

        Retrying here (not in a sleeping loop) keeps signals live: SIGTERM
        ends a vionet that is waiting for its VMM at once.
        """
        try:
            conn = vsock.connect(self.args.socket, attempts=1)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise
            self.retry_at = time.monotonic() + self.retry_delay
            self.retry_delay = min(self.retry_delay * 2, vsock.CONNECT_BACKOFF_MAX)
            return
        self.retry_at = None
        self.retry_delay = vsock.CONNECT_BACKOFF_FIRST
        self._attach(conn)

    def _timeout(self) -> float:
        if self.retry_at is None:
            return REAP_INTERVAL_S
        return max(0.0, min(REAP_INTERVAL_S, self.retry_at - time.monotonic()))

    def _on_conn(self) -> None:
        assert self.conn is not None
        try:
            events = self.conn.pump(self.dev.backend)
        except VhostUserError as exc:
            log.warning("vhost-user protocol error: %s; dropping the connection", exc)
            self._refuse(exc.events or [])
            return
        if events is None:
            self._detach()
            return
        try:
            self.dev.handle(events)
        except (OSError, ValueError) as exc:
            # The Backend accepted the request but the device cannot honour it:
            # memory it cannot map (fd too short, not a file), a ring it cannot
            # place.  The VMM's setup is unusable: end it like a protocol error
            # instead of letting the exception end the process.
            log.warning("cannot apply the VMM's setup: %s; dropping the connection", exc)
            self._refuse([])

    def _refuse(self, events: list) -> None:
        """Count a protocol error, apply what came before it if possible, disconnect."""
        self.dev.counters["protocol_errors"] += 1
        try:
            self.dev.handle(events)
        except (OSError, ValueError) as exc:
            log.warning("while dropping the connection: %s", exc)
        self._detach()

    def run(self) -> int:
        self._signals()
        if self.args.fd is not None:
            self._attach(vsock.from_fd(self.args.fd))
        elif self.args.connect:
            self._connect()
        elif self.args.socket:
            self.listener = vsock.listen(self.args.socket)
            self._watch_listener(True)
            log.info("listening on %s", self.args.socket)
        if self.args.privsep_fd is not None:
            self.sel.register(self.offer_r, selectors.EVENT_READ, "offered")
        while self.running:
            if self.retry_at is not None and time.monotonic() >= self.retry_at:
                self._connect()
            for key, _ in self.sel.select(self._timeout()):
                if key.data == "signal":
                    self._on_signal()
                elif key.data == "listen" and self.listener and not self.conn:
                    self._attach(self.listener.accept())
                elif key.data == "conn" and self.conn:
                    self._on_conn()
                elif key.data == "offered":
                    self._on_offered()
            if self.dev.reap() and self.conn:
                self._detach()
        return 0

    def close(self) -> None:
        if self.conn:
            self.sel.unregister(self.conn)
            self.conn.close()
            self.conn = None
        if self.listener:
            self.listener.close()
        while not self.offered.empty():
            os.close(self.offered.get_nowait())
        self.dev.close()


# --- under vmdnetd (privilege separation) -------------------------------------------------
# The parent execs vionet with --privsep-fd (and stdio) only, and --sandbox.  The
# channel brings the tap (VIONET_TAP) first, then each accepted VMM connection
# (VHOST_USER_FD); vionet never needs a path or a privilege.  (--tap-fd and --fd
# with --privsep-fd still work: fds inherited at exec, as before.)
#
# The tap is received before the sandbox, on purpose: the device is built around
# it (queues, offload plan); TUNGETIFF and TUNGETVNETHDRSZ check it against the
# message while those ioctls are still allowed (the seccomp allowlist stays
# without any tun ioctl); and the fds the sandbox keeps are known when it closes
# the rest.  Connections come any time later: receiving an fd is a recvmsg, which
# the allowlist has, and nothing else a connection needs is a new system call.


def privsep_tap(link: ParentLink) -> tuple[int, int]:
    """Receive the tap from the parent and check it is the tap the message names.

    Returns (fd, vnet_hdr_sz); raises PrivsepError (fd closed) otherwise.
    """
    from vmdnet.tun import linux  # queries only: this process never opens a device
    fd, tap = link.receive_tap()
    try:
        _check_tap(linux, fd, tap)
    except (PrivsepError, OSError):
        os.close(fd)
        raise
    log.info("tap %s from the parent (vnet header %d bytes)", tap.name, tap.vnet_hdr_sz)
    return fd, tap.vnet_hdr_sz


def _check_tap(linux: Any, fd: int, tap: VionetTap) -> None:
    name, iff = linux.get_iff(fd)
    if name != tap.name:
        raise PrivsepError(f"VIONET_TAP: the fd is tap {name}, the message says {tap.name}")
    if not iff & linux.Iff.TAP or not iff & linux.Iff.NO_PI:
        raise PrivsepError(f"VIONET_TAP: {name} is not an IFF_TAP|IFF_NO_PI tap ({iff!r})")
    has_hdr = bool(iff & linux.Iff.VNET_HDR)
    if has_hdr != (tap.vnet_hdr_sz != NO_VNET_HDR):
        raise PrivsepError(f"VIONET_TAP: {name} IFF_VNET_HDR is {has_hdr}, the message "
                           f"says vnet_hdr_sz {tap.vnet_hdr_sz}")
    if has_hdr and linux.get_vnet_hdr_sz(fd) != tap.vnet_hdr_sz:
        raise PrivsepError(f"VIONET_TAP: {name} has a {linux.get_vnet_hdr_sz(fd)}-byte vnet "
                           f"header, the message says {tap.vnet_hdr_sz}")


def privsep_sandbox(args: argparse.Namespace, ctl: Control, tap_fd: int) -> None:
    """Enter the sandbox before the first guest byte is read; keep only our fds."""
    uid, gid, root = args.sandbox.split(":", 2)
    keep = {0, 1, 2, tap_fd, ctl.sel.fileno(), ctl.sig_r.fileno(), ctl.sig_w.fileno(),
            ctl.offer_r.fileno(), ctl.offer_w.fileno()}
    keep |= {fd for fd in (args.fd, args.privsep_fd) if fd is not None}
    keep |= ctl.dev.keep_fds()
    enter_sandbox(Ids(int(uid), int(gid)), root, keep)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_capabilities:
        print_capabilities()
        return 0
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="vionet[%(process)d] %(levelname)s %(message)s")
    link = None
    if args.privsep_fd is not None:
        link = ParentLink(args.privsep_fd, args.privsep_id, lambda: dev.stats())
    vnet_hdr, hdr_sz = not args.no_vnet_hdr, DEFAULT_TAP_HDR_SZ
    if link is not None and args.tap is None and args.tap_fd is None:
        try:
            tap_fd, size = privsep_tap(link)
        except (PrivsepError, OSError) as exc:
            log.error("privsep: %s; exiting", exc)
            return EXIT_PARENT_GONE
        vnet_hdr, hdr_sz = size != NO_VNET_HDR, size or DEFAULT_TAP_HDR_SZ
    else:
        tap_fd = open_tap(args)
    set_nonblocking(tap_fd)
    caps = tcaps.TapCaps(vnet_hdr=vnet_hdr, offloads=args.offload_set)
    dev = Vionet(tap_fd, link or LocalTap(tap_fd), caps, discard=args.discard,
                 rsc_interval_us=args.rsc, lladdr=args.lladdr, locked=args.locked,
                 dhcp=args.dhcp_config, vnet_hdr_sz=hdr_sz)
    ctl = Control(args, dev)
    if args.sandbox:
        privsep_sandbox(args, ctl, tap_fd)
    if link is not None:
        # After the sandbox: it closes every fd it was not told to keep, and a
        # connection the reader thread received meanwhile would be one of them.
        link.on_vhost_user_fd = ctl.offer_connection
        link.start()
    try:
        return ctl.run()
    finally:
        ctl.close()
        ctl.report()


if __name__ == "__main__":
    sys.exit(main())
