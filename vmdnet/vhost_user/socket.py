"""Thin socket adapter for vhost-user: AF_UNIX stream, SCM_RIGHTS, listen or connect.

The only I/O of the vhost-user layer; everything it reads goes to a sans-IO
Backend.  Reads are sized by backend.bytes_wanted() so one recvmsg never spans
two messages: the fds it returns then belong to exactly one message.

Roles (vhost-user.rst: either side may listen):
  listen(path)   back-end is the server; one front-end (VMM) at a time; a stale
                 socket left at `path` by a dead process is unlinked first.
  connect(path)  back-end is the client (QEMU `server=on`), retried with
                 exponential backoff while the VMM is not listening yet.
  from_fd(fd)    an inherited connected socket (`--fd=FDNUM` convention).

A Connection reports end of file by pump() returning None: the caller then
calls backend.disconnect() and waits for the VMM to come back (accept() again,
or connect() again).
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable

from vmdnet.vhost_user.backend import Backend
from vmdnet.vhost_user.codec import close_fds
from vmdnet.vhost_user.events import Event
from vmdnet.vhost_user.protocol import MAX_FDS_PER_MESSAGE, VhostUserError

log = logging.getLogger(__name__)

# Bytes of SCM_RIGHTS space per recvmsg: room for the most fds any message has.
_ANCILLARY_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)
# connect(): first retry delay, its growth cap, and the number of attempts
# (about a minute in total) before giving up on a VMM that never listens.
CONNECT_BACKOFF_FIRST = 0.05
CONNECT_BACKOFF_MAX = 2.0
CONNECT_ATTEMPTS = 40
# Only one VMM talks to a device at a time; a second one waits in the backlog.
LISTEN_BACKLOG = 1
# errnos meaning "nobody listens at that path yet" for connect().
_NOT_LISTENING = (errno.ENOENT, errno.ECONNREFUSED)


def recv_with_fds(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
    """One recvmsg of at most `size` bytes with SCM_RIGHTS fds; b"" on EOF.

    Raises VhostUserError (after closing what arrived) when the peer sent more
    fds than any message may carry (MSG_CTRUNC) or other ancillary data.
    """
    data, ancdata, msg_flags, _ = sock.recvmsg(size, _ANCILLARY_SIZE)
    fds: list[int] = []
    other = False
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[:len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
        else:
            other = True
    if msg_flags & socket.MSG_CTRUNC or other:
        close_fds(fds)
        raise VhostUserError("front-end sent too many fds or unexpected ancillary data")
    return data, fds


def send_with_fds(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    """Send all of `data`; `fds` ride as SCM_RIGHTS on the first byte."""
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([data], anc)
        data = data[sent:]
    if data:
        sock.sendall(data)


class Connection:
    """One vhost-user connection to a front-end (blocking socket; poll it for readability)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self, backend: Backend) -> list[Event] | None:
        """Read what the backend wants next, feed it, send its replies.

        Returns the device events, or None when the front-end closed the
        connection (also when it hung up before reading a reply: the events of
        that read are then dropped, the caller's disconnect resets everything).
        VhostUserError propagates: close the connection then.  On a
        non-blocking socket, a reply that does not fit the socket buffer is a
        VhostUserError (with the events): a front-end that leaves replies
        unread would otherwise make us buffer without bound.
        """
        try:
            data, fds = recv_with_fds(self.sock, backend.bytes_wanted())
        except (BlockingIOError, InterruptedError):
            return []
        except ConnectionResetError:
            return None
        if not data:
            close_fds(fds)
            return None
        events = backend.receive(data, fds)
        out = backend.data_to_send()
        if out:
            try:
                self.sock.sendall(out)
            except (BrokenPipeError, ConnectionResetError):
                return None
            except BlockingIOError:
                raise VhostUserError("front-end does not read its replies "
                                     "(socket send buffer full)", events) from None
        return events

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listener:
    """A listening vhost-user socket at `path` (back-end as server)."""

    def __init__(self, path: str) -> None:
        self.path = path
        _unlink_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(path)
            self.sock.listen(LISTEN_BACKLOG)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> Connection:
        conn, _ = self.sock.accept()
        log.info("vhost-user front-end connected on %s", self.path)
        return Connection(conn)

    def close(self) -> None:
        """Close and remove the socket path."""
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unlink_stale(path: str) -> None:
    """Remove a socket left at `path` by a dead process; refuse to remove anything else.

    Liveness is probed by connecting: a live owner sees that probe as a connection
    that ends at once (EOF before any message), which its accept loop survives.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise FileExistsError(errno.EADDRINUSE, "a live process listens there", path)


def listen(path: str) -> Listener:
    """Listen at `path` (back-end as server)."""
    return Listener(path)


def from_fd(fd: int) -> Connection:
    """Adopt an already connected socket passed by number (the `--fd=FDNUM` convention)."""
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ValueError(f"fd {fd} is not an AF_UNIX stream socket")
    return Connection(sock)


def connect(path: str, *, attempts: int = CONNECT_ATTEMPTS,
            sleep: Callable[[float], None] = time.sleep) -> Connection:
    """Connect to a front-end listening at `path`, retrying with exponential backoff.

    Retries only while nobody listens (ENOENT, ECONNREFUSED); raises the last
    error after `attempts` tries.
    """
    delay = CONNECT_BACKOFF_FIRST
    for attempt in range(1, attempts + 1):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            log.info("connected to vhost-user front-end at %s", path)
            return Connection(sock)
        except OSError as e:
            sock.close()
            if e.errno not in _NOT_LISTENING or attempt == attempts:
                raise
            log.debug("front-end at %s not listening (%s), retry in %.2fs", path, e, delay)
        sleep(delay)
        delay = min(delay * 2, CONNECT_BACKOFF_MAX)
    raise AssertionError("unreachable")
