"""The socket adapter over real AF_UNIX sockets: SCM_RIGHTS with real memfds and
eventfds, fd attribution in a stream of queued messages, EOF, listen/connect."""

from __future__ import annotations

import array
import io
import json
import mmap
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import test_vhost_user_frames as fr  # noqa: E402

from vmdnet.vhost_user import Backend, MemTableChanged, VhostUserError, VringReady  # noqa: E402
from vmdnet.vhost_user import socket as vus  # noqa: E402
from vmdnet.vhost_user.capabilities import print_capabilities  # noqa: E402

OFFER = fr.F_VERSION_1 | fr.F_MRG_RXBUF
PATTERN = b"vmdnet guest memory \x00\xff"


def front_send(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """Front-end side sendmsg, written against the socket API (not vmdnet's helper)."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    assert sock.sendmsg([data], anc) == len(data)


def pump_until(conn: vus.Connection, b: Backend, want_ready: int, limit: int) -> list:
    events: list = []
    for _ in range(limit):  # bounded: each call reads at most one header or payload
        got = conn.pump(b)
        assert got is not None, "unexpected EOF"
        events += got
        if sum(isinstance(e, VringReady) for e in events) == want_ready:
            return events
    raise AssertionError(f"no {want_ready} ready vrings after {limit} reads: {events}")


def test_queued_stream_with_fds_over_socketpair() -> None:
    """The whole handshake is queued in the socket before the back-end reads: each fd must
    still land on its own message, and the memfd must map the front-end's memory."""
    before = fr.open_fds()
    front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    seq = fr.handshake()
    mem_fd = seq[6][1][0]
    with mmap.mmap(mem_fd, fr.MEM_SIZE) as m:
        m[0x100:0x100 + len(PATTERN)] = PATTERN
    for data, fds in seq:
        front_send(front, data, fds)
        for fd in fds:
            os.close(fd)  # in flight, the kernel holds its own reference
    b = Backend(OFFER)
    with vus.Connection(back) as conn:
        events = pump_until(conn, b, want_ready=2, limit=3 * len(seq))
        (table,) = [e for e in events if isinstance(e, MemTableChanged)]
        (region,) = table.regions
        with mmap.mmap(region.fd, region.mmap_offset + region.memory_size) as m:
            assert m[0x100:0x100 + len(PATTERN)] == PATTERN
        for e in events:
            if isinstance(e, VringReady):
                os.eventfd_write(e.vring.kick_fd, 1)  # really the eventfds we sent
        replies = fr.parse_replies(front.recv(4096))
        assert [r[0] for r in replies] == [fr.GET_FEATURES, fr.GET_PROTOCOL_FEATURES,
                                           fr.GET_QUEUE_NUM, fr.SET_FEATURES, fr.SET_MEM_TABLE]
        front.close()
        assert conn.pump(b) is None  # EOF
        b.disconnect()
    b.close()
    assert fr.open_fds() - before == set()


def test_too_many_fds_in_one_message_refused_without_leak() -> None:
    before = fr.open_fds()
    front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = [fr.eventfd() for _ in range(vus.MAX_FDS_PER_MESSAGE + 4)]
    front_send(front, fr.frame(fr.SET_OWNER), fds)
    for fd in fds:
        os.close(fd)
    b = Backend(OFFER)
    with vus.Connection(back) as conn, pytest.raises(VhostUserError, match="too many fds"):
        conn.pump(b)
    front.close()
    b.close()
    assert fr.open_fds() - before == set()


def test_replies_go_back_through_pump() -> None:
    front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    front_send(front, fr.frame(fr.GET_QUEUE_NUM), [])
    b = Backend(OFFER, queue_pairs=3)
    with vus.Connection(back) as conn:
        assert conn.pump(b) == []
        assert fr.parse_replies(front.recv(64)) == [
            (fr.GET_QUEUE_NUM, fr.VERSION | fr.REPLY, (3).to_bytes(8, sys.byteorder))]
    front.close()


def test_send_with_fds_round_trip() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = fr.eventfd()
    vus.send_with_fds(a, b"hello", [fd])
    data, fds = vus.recv_with_fds(b, 64)
    assert data == b"hello" and len(fds) == 1
    os.eventfd_write(fd, 3)
    assert os.eventfd_read(fds[0]) == 3  # same eventfd on both ends
    for x in (fd, fds[0]):
        os.close(x)
    a.close()
    b.close()


def test_listen_unlinks_stale_socket_only(tmp_path) -> None:
    path = str(tmp_path / "vu.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the path stays behind, nobody listens
    with vus.listen(path) as listener:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        with listener.accept() as conn:
            client.sendall(fr.frame(fr.GET_FEATURES))
            assert conn.pump(Backend(OFFER)) == []
        client.close()
        with pytest.raises(FileExistsError):
            vus.listen(path)  # a live listener is not stale
        with listener.accept() as probe:  # the liveness probe shows up as an empty connection
            assert probe.pump(Backend(OFFER)) is None
    assert not os.path.exists(path)
    regular = tmp_path / "file"
    regular.write_text("not a socket")
    with pytest.raises(FileExistsError):
        vus.listen(str(regular))
    assert regular.read_text() == "not a socket"


def test_connect_retries_with_backoff_until_listening(tmp_path) -> None:
    path = str(tmp_path / "vu.sock")
    delays: list[float] = []
    listeners: list[vus.Listener] = []

    def sleep(d: float) -> None:  # the VMM starts listening during the second wait
        delays.append(d)
        if len(delays) == 2:
            listeners.append(vus.listen(path))

    with vus.connect(path, sleep=sleep) as conn:
        assert delays == [vus.CONNECT_BACKOFF_FIRST, 2 * vus.CONNECT_BACKOFF_FIRST]
        with listeners[0].accept() as served:
            served.sock.sendall(b"x")
            assert conn.sock.recv(1) == b"x"
    listeners[0].close()


def test_connect_gives_up(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        vus.connect(str(tmp_path / "nobody"), attempts=3, sleep=lambda d: None)


def test_from_fd_adopts_connected_socket_only() -> None:
    front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    front_send(front, fr.frame(fr.GET_QUEUE_NUM), [])
    with vus.from_fd(back.detach()) as conn:
        assert conn.pump(Backend(OFFER)) == []
        assert fr.parse_replies(front.recv(64))[0][0] == fr.GET_QUEUE_NUM
    front.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(ValueError):
        vus.from_fd(udp.fileno())
    udp.close()


def test_print_capabilities() -> None:
    out = io.StringIO()
    print_capabilities(out)
    assert json.loads(out.getvalue()) == {"type": "net"}
