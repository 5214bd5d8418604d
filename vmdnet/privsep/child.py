"""A child's end of its privsep channel to the parent (used by vionet under vmdnetd).

The channel is the only fd a vionet is exec'd with (besides stdio).  Its first
frame is VIONET_TAP: receive_tap() waits for it before the sandbox and before
the reader thread starts.  Every later VHOST_USER_FD is a VMM connection for
on_vhost_user_fd (the vionet replaces its current one with it).  Each fd is
checked for its kind on receipt (a character device for the tap, a connected
AF_UNIX stream socket for a connection); anything else is a protocol error:
the fd is closed and the child exits.

ParentLink is a TapControl: set_offload / set_vnet_hdr_sz send a request and
wait for the parent's RESULT (the parent validates it and issues the ioctl).
A reader thread owns the socket's receive side: RESULTs go to the waiting
caller, STATS_REQUEST is answered with stats_fn(), LOG_VERBOSE switches the
root logger's level.  If the parent goes away the child exits: without the
parent it can no longer change its tap.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

from vmdnet.privsep.channel import Channel
from vmdnet.privsep.codec import (
    ACCEPTS,
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

log = logging.getLogger(__name__)

# What a vionet accepts from the parent (the codec refuses everything else):
#   RESULT          the answer to one of our tap requests (matched by seq)
#   STATS_REQUEST   answered with stats_fn()
#   LOG_VERBOSE     the root logger's level
#   VHOST_USER_FD   a new connection for on_vhost_user_fd (closed if there is none)
#   VIONET_TAP      once, first, through receive_tap(); a second one is a protocol error
ACCEPTED_FROM_PARENT = ACCEPTS[Peer.VIONET][Peer.PARENT]

# The parent answers a tap request at once (one ioctl); a minute means it is wedged.
REQUEST_TIMEOUT_S = 60.0
# Exit status when the parent vanished or broke the protocol.
EXIT_PARENT_GONE = 3
# The parent sends the tap right after exec; a loaded machine may take a while to
# schedule either side, a minute without it means the parent is wedged.
TAP_TIMEOUT_S = 60.0


def check_tap_fd(fd: int) -> None:
    """The fd of a VIONET_TAP must be a character device (/dev/net/tun); PrivsepError."""
    if not stat.S_ISCHR(os.fstat(fd).st_mode):
        raise PrivsepError(f"VIONET_TAP: fd {fd} is not a character device")


def check_connection_fd(fd: int) -> None:
    """The fd of a VHOST_USER_FD must be an AF_UNIX stream socket; PrivsepError."""
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise PrivsepError(f"VHOST_USER_FD: fd {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    try:
        kind = (sock.family, sock.type)
    finally:
        sock.detach()      # the fd stays open: it is the caller's
    if kind != (socket.AF_UNIX, socket.SOCK_STREAM):
        raise PrivsepError(f"VHOST_USER_FD: fd {fd} is {kind}, not an AF_UNIX stream socket")


class ParentLink:
    """Frames to and from the parent over FD (a SOCK_SEQPACKET socket)."""

    def __init__(self, fd: int, my_id: int, stats_fn: Callable[[], dict[str, Any]],
                 on_vhost_user_fd: Callable[[int], None] | None = None) -> None:
        sock = socket.socket(fileno=fd)
        self.channel = Channel(sock, Peer.VIONET, Peer.PARENT, my_id)
        self.stats_fn = stats_fn
        self.on_vhost_user_fd = on_vhost_user_fd
        self._send_lock = threading.Lock()
        self._results: dict[int, queue.SimpleQueue[int]] = {}
        self._results_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, name="privsep", daemon=True)

    def fileno(self) -> int:
        return self.channel.fileno()

    def start(self) -> None:
        self._reader.start()

    def receive_tap(self, timeout: float = TAP_TIMEOUT_S) -> tuple[int, VionetTap]:
        """Wait for the first frame, which must be VIONET_TAP; its fd (ours now) and body.

        Called before start() (the reader thread is not running yet).  Raises
        PrivsepError for anything else, an fd of the wrong kind, silence for
        TIMEOUT seconds, or a closed channel; the fd is closed then.
        """
        ready, _, _ = select.select([self.channel], [], [], timeout)
        if not ready:
            raise PrivsepError(f"no VIONET_TAP from the parent within {timeout} s")
        msgs = self.channel.recv()
        if msgs is None:
            raise PrivsepError("the parent closed the channel before sending the tap")
        fds = [m.fd for m in msgs if m.fd is not None]
        try:
            if len(msgs) != 1 or not isinstance(msgs[0].body, VionetTap):
                raise PrivsepError(f"first frame {[m.type.name for m in msgs]}, want VIONET_TAP")
            assert msgs[0].fd is not None     # the codec guarantees it for VIONET_TAP
            check_tap_fd(msgs[0].fd)
        except (PrivsepError, OSError):
            for fd in fds:
                os.close(fd)
            raise
        return msgs[0].fd, msgs[0].body

    # --- TapControl ----------------------------------------------------------
    def set_offload(self, flags: int) -> None:
        self._request(TapSetOffload(flags))

    def set_vnet_hdr_sz(self, size: int) -> None:
        self._request(TapSetVnetHdrSz(size))

    def _request(self, body: TapSetOffload | TapSetVnetHdrSz) -> None:
        box: queue.SimpleQueue[int] = queue.SimpleQueue()
        with self._send_lock:
            seq = self.channel.next_seq()
            with self._results_lock:
                self._results[seq] = box
            self.channel.send(body, seq=seq)
        try:
            err = box.get(timeout=REQUEST_TIMEOUT_S)
        except queue.Empty:
            raise OSError(0, f"parent did not answer {type(body).__name__}") from None
        finally:
            with self._results_lock:
                self._results.pop(seq, None)
        if err:
            raise OSError(err, f"parent refused {body}: {os.strerror(err)}")

    # --- the reader thread -----------------------------------------------------
    def _read_loop(self) -> None:
        try:
            while True:
                msgs = self.channel.recv()
                if msgs is None:
                    log.error("parent closed the privsep channel; exiting")
                    break
                for m in msgs:
                    self._dispatch(m)
        except (PrivsepError, OSError) as exc:
            log.error("privsep channel: %s; exiting", exc)
        os._exit(EXIT_PARENT_GONE)

    def _dispatch(self, m: Message) -> None:
        if isinstance(m.body, Result):
            with self._results_lock:
                box = self._results.get(m.seq)
            if box is None:
                log.warning("RESULT for unknown request %d ignored", m.seq)
            else:
                box.put(m.body.errno)
        elif isinstance(m.body, StatsRequest):
            with self._send_lock:
                self.channel.send(Stats(self.stats_fn()), seq=m.seq)
        elif isinstance(m.body, LogVerbose):
            logging.getLogger().setLevel(logging.DEBUG if m.body.verbose else logging.WARNING)
        elif isinstance(m.body, VhostUserFd) and m.fd is not None:
            try:
                check_connection_fd(m.fd)
            except (PrivsepError, OSError):
                os.close(m.fd)
                raise
            if self.on_vhost_user_fd is None:
                os.close(m.fd)
            else:
                self.on_vhost_user_fd(m.fd)
        elif isinstance(m.body, VionetTap):
            if m.fd is not None:
                os.close(m.fd)
            raise PrivsepError("a second VIONET_TAP: the tap is given once, at start")
