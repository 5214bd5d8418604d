"""vmdnetd's control socket: accept, read one request, check who asks, answer.

The socket is AF_UNIX/SOCK_STREAM, owned by the configuration's `socket
owner` with mode 0660. SO_PEERCRED tells who is asking: root may do
anything, everybody else may only read (status, show-interfaces).
Clients are non-blocking and buffered in the parent's selector loop, so a
client that never finishes its request cannot stall the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmdnet.privsep.control import (
    MAX_REQUEST,
    ControlError,
    Request,
    decode_request,
    encode_answer,
)

log = logging.getLogger(__name__)

# struct ucred: pid_t pid, uid_t uid, gid_t gid.
UCRED = struct.Struct("iII")
# Pending connections the kernel keeps for us.
LISTEN_BACKLOG = 16
# A client gets this long to send its request; then it is dropped.
CLIENT_TIMEOUT_S = 10.0
# How long an answer may take to write (answers are small; the client reads them at once).
SEND_TIMEOUT_S = 5.0
# Clients at once; more are refused until some finish.
MAX_CLIENTS = 32
# Unread bytes thrown away before closing a client: a socket buffer's worth
# (a unix socket queues at most a few hundred KiB); a client sending more is
# reset, which is its own doing.
DRAIN_READS_MAX = 16
DRAIN_READ_BYTES = 64 * 1024


def listen(path: str, uid: int | None, gid: int | None) -> socket.socket:
    """Bind PATH (replacing a stale socket), chown it, mode 0660, listen."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o117)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(path, 0o660)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
    _, uid, _ = UCRED.unpack(creds)
    return uid


@dataclass
class Client:
    """One control connection being read."""

    sock: socket.socket
    uid: int
    since: float = field(default_factory=time.monotonic)
    buf: bytearray = field(default_factory=bytearray)


Handler = Callable[[Request], Any]


class CommandFailed(Exception):
    """A command that could not be done; the message goes to the client."""


def answer(client: Client, handler: Handler) -> bytes:
    """Decode the buffered request, check permission, run it; the answer bytes."""
    try:
        req = decode_request(bytes(client.buf))
    except ControlError as exc:
        return encode_answer(error=str(exc))
    if req.writes and client.uid != 0:
        log.warning("uid %d may not %s", client.uid, req.command)
        return encode_answer(error=f"{req.command}: permission denied (only root may change "
                                   "the daemon's state)")
    try:
        return encode_answer(handler(req))
    except CommandFailed as exc:
        return encode_answer(error=str(exc))


def receive(client: Client) -> bool:
    """Read what is there; True once the request is complete (EOF or newline)."""
    try:
        data = client.sock.recv(MAX_REQUEST + 1)
    except BlockingIOError:
        return False
    except OSError:
        return True
    client.buf += data
    return not data or b"\n" in data or len(client.buf) > MAX_REQUEST


def _discard_unread(sock: socket.socket) -> None:
    """Read away what the client sent beyond its request: closing a unix socket with
    unread data resets the peer, which would then lose our answer."""
    for _ in range(DRAIN_READS_MAX):
        try:
            if not sock.recv(DRAIN_READ_BYTES, socket.MSG_DONTWAIT):
                return
        except OSError:
            return


def finish(client: Client, reply: bytes) -> None:
    try:
        client.sock.settimeout(SEND_TIMEOUT_S)
        client.sock.sendall(reply)
        _discard_unread(client.sock)
    except OSError as exc:
        log.debug("control client went away: %s", exc)
    finally:
        client.sock.close()
