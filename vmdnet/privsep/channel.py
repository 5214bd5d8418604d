"""The socket side of the privsep codec: one SOCK_SEQPACKET socketpair end.

One frame per record, so an fd (SCM_RIGHTS) always belongs to the record's
frame and a short or merged record is a protocol error, not a resync problem.
"""

from __future__ import annotations

import array
import socket

from vmdnet.privsep.codec import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Body,
    Decoder,
    Message,
    Peer,
    PrivsepError,
    encode,
)

# One record is one frame: header plus the largest payload.
RECORD_MAX = HEADER_SIZE + MAX_PAYLOAD
# At most one fd per frame; room for a few more lets us notice (and close) extras.
MAX_FDS_PER_RECORD = 4


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected SOCK_SEQPACKET pair, close-on-exec (pass one end on explicitly)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class Channel:
    """Frames to and from one peer over SOCK = our end of a SEQPACKET pair."""

    def __init__(self, sock: socket.socket, me: Peer, peer: Peer, my_id: int) -> None:
        self.sock = sock
        self.me = me
        self.peer = peer
        self.my_id = my_id
        self.decoder = Decoder(me, peer)
        self._seq = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def send(self, body: Body, *, seq: int | None = None, fd: int | None = None) -> int:
        """Send one frame (with FD if given); return its seq."""
        seq = self.next_seq() if seq is None else seq
        frame = encode(self.me, self.peer, body, peer_id=self.my_id, seq=seq,
                       with_fd=fd is not None)
        if fd is None:
            self.sock.sendall(frame)
        else:
            socket.send_fds(self.sock, [frame], [fd])
        return seq

    def recv(self) -> list[Message] | None:
        """Read one record; its frames (normally one), or None when the peer hung up.

        Raises PrivsepError on anything the codec refuses (and closes the fds
        that came with it).
        """
        fds = array.array("i")
        data, ancdata, msg_flags, _ = self.sock.recvmsg(
            RECORD_MAX, socket.CMSG_SPACE(MAX_FDS_PER_RECORD * fds.itemsize))
        for level, ctype, cdata in ancdata:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                usable = len(cdata) - len(cdata) % fds.itemsize
                fds.frombytes(cdata[:usable])
        if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            self.decoder.receive(b"", list(fds))
            self.decoder.close()
            raise PrivsepError("record or its fds truncated")
        if not data and not fds:
            return None
        msgs = self.decoder.receive(data, list(fds))
        if not self.decoder.idle:
            raise PrivsepError("a record ended inside a frame")
        self.decoder.check_no_stray_fds()
        return msgs

    def close(self) -> None:
        self.decoder.close()
        self.sock.close()
