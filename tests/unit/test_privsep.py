"""The privsep frame codec: round trips, byte-at-a-time feeding, the accept tables,
every header and payload check, and fds over a real SOCK_SEQPACKET socketpair."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from vmdnet.privsep import codec as C
from vmdnet.privsep.channel import Channel, socketpair
from vmdnet.privsep.child import ParentLink, check_connection_fd
from vmdnet.privsep.codec import Decoder, Peer, PrivsepError

TO_PARENT = [C.TapSetOffload(0x1F), C.TapSetVnetHdrSz(12),
             C.Stats({"tx": {"packets": 3}, "negotiated_features": ["VIRTIO_F_VERSION_1"]})]
TO_VIONET = [C.Result(0), C.Result(22), C.StatsRequest(), C.LogVerbose(True),
             C.LogVerbose(False)]


def frames(sender: Peer, receiver: Peer, bodies: list) -> bytes:
    return b"".join(C.encode(sender, receiver, b, peer_id=7, seq=i + 1)
                    for i, b in enumerate(bodies))


@pytest.mark.parametrize("sender,receiver,bodies", [
    (Peer.VIONET, Peer.PARENT, TO_PARENT), (Peer.PARENT, Peer.VIONET, TO_VIONET)])
def test_round_trip_whole_and_byte_by_byte(sender, receiver, bodies) -> None:
    data = frames(sender, receiver, bodies)
    whole = Decoder(receiver, sender).receive(data)
    assert [m.body for m in whole] == bodies
    assert [m.seq for m in whole] == list(range(1, len(bodies) + 1))
    assert {m.peer_id for m in whole} == {7}
    dec = Decoder(receiver, sender)
    one_by_one = []
    for i in range(len(data)):
        one_by_one += dec.receive(data[i:i + 1])
    assert one_by_one == whole
    assert dec.idle


def test_header_layout_is_explicit() -> None:
    frame = C.encode(Peer.VIONET, Peer.PARENT, C.TapSetOffload(0x3), peer_id=0x01020304,
                     seq=0x0A0B0C0D)
    assert frame == bytes([1, 0, 0, 2, 0, 0, 0, 4, 1, 2, 3, 4, 0xA, 0xB, 0xC, 0xD, 0, 0, 0, 3])


@pytest.mark.parametrize("sender,receiver,body", [
    (Peer.VIONET, Peer.PARENT, C.StatsRequest()),     # parents ask, they are not asked
    (Peer.VIONET, Peer.PARENT, C.Result(0)),
    (Peer.PARENT, Peer.VIONET, C.TapSetOffload(1)),   # only a child asks for ioctls
    (Peer.PARENT, Peer.VIONET, C.Stats({})),
])
def test_encoder_refuses_what_the_peer_would_refuse(sender, receiver, body) -> None:
    with pytest.raises(PrivsepError, match="does not accept"):
        C.encode(sender, receiver, body, peer_id=1, seq=1)


def test_decoder_refuses_types_not_in_its_table() -> None:
    # A frame a vionet may receive, fed to the parent's decoder.
    frame = C.encode(Peer.PARENT, Peer.VIONET, C.StatsRequest(), peer_id=0, seq=1)
    with pytest.raises(PrivsepError, match="does not accept STATS_REQUEST"):
        Decoder(Peer.PARENT, Peer.VIONET).receive(frame)


def raw(version=1, flags=0, mtype=2, length=None, payload=b"\0\0\0\1") -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("!BBHIII", version, flags, mtype, n, 1, 1) + payload


@pytest.mark.parametrize("data,match", [
    (raw(version=2), "version 2"),
    (raw(flags=0x80), "unknown frame flags"),
    (raw(mtype=99), "unknown message type 99"),
    (raw(mtype=0), "unknown message type 0"),
    (raw(length=C.MAX_PAYLOAD + 1, payload=b""), "length"),
    (raw(payload=b"\0\0\1"), "payload of 3 bytes"),
    (raw(payload=b"\0\1\0\0\0"), "payload of 5 bytes"),
    (raw(payload=b"\0\1\0\0"), "outside"),                      # offload flags > mask
    (raw(mtype=3, payload=b"\0\0\0\x0b"), "size 11"),           # vnet hdr size 11
    (raw(mtype=5, payload=b"[1,2]"), "not a JSON object"),
    (raw(mtype=5, payload=b"\xff\xfe"), "not UTF-8 JSON"),
    (raw(mtype=5, payload=b"[" * 100000 + b"]" * 100000), "length"),
    (raw(flags=C.FLAG_FD), "fd flag set"),
])
def test_decoder_checks_every_field(data: bytes, match: str) -> None:
    dec = Decoder(Peer.PARENT, Peer.VIONET)
    with pytest.raises(PrivsepError, match=match):
        dec.receive(data)
    # Broken for good.
    with pytest.raises(PrivsepError, match="already broken"):
        dec.receive(raw())


def test_deeply_nested_json_is_a_protocol_error() -> None:
    payload = b"[" * 30000 + b"]" * 30000
    assert len(payload) <= C.MAX_PAYLOAD
    with pytest.raises(PrivsepError, match="JSON"):
        Decoder(Peer.PARENT, Peer.VIONET).receive(raw(mtype=5, payload=payload))


def test_result_errno_range() -> None:
    to_vionet = Decoder(Peer.VIONET, Peer.PARENT)
    with pytest.raises(PrivsepError, match="errno -1"):
        to_vionet.receive(raw(mtype=1, payload=struct.pack("!i", -1)))


def test_fd_rides_with_its_frame_in_memory() -> None:
    r, w = os.pipe()
    os.close(w)
    frame = C.encode(Peer.PARENT, Peer.VIONET, C.VhostUserFd(), peer_id=0, seq=5, with_fd=True)
    dec = Decoder(Peer.VIONET, Peer.PARENT)
    assert dec.receive(frame[:3], [r]) == []
    (m,) = dec.receive(frame[3:])
    assert m.fd == r and isinstance(m.body, C.VhostUserFd)
    os.close(r)


def test_fd_type_without_fd_is_refused() -> None:
    frame = C.encode(Peer.PARENT, Peer.VIONET, C.VhostUserFd(), peer_id=0, seq=5, with_fd=True)
    with pytest.raises(PrivsepError, match="no fd came"):
        Decoder(Peer.VIONET, Peer.PARENT).receive(frame)
    with pytest.raises(PrivsepError, match="needs fd"):
        C.encode(Peer.PARENT, Peer.VIONET, C.VhostUserFd(), peer_id=0, seq=5)
    unflagged = bytes([1, 0]) + frame[2:]
    with pytest.raises(PrivsepError, match="fd flag missing"):
        Decoder(Peer.VIONET, Peer.PARENT).receive(unflagged)


def pipe_fds(n: int) -> list[int]:
    """N open read ends (their write ends closed): stand-ins for a tap or socket fd."""
    fds = []
    for _ in range(n):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    return fds


FD_BODIES = [C.VionetTap("vndt0", 12), C.VhostUserFd(), C.VionetTap("a", C.NO_VNET_HDR),
             C.VionetTap("x" * 15, 20), C.VhostUserFd()]


def test_fd_frames_round_trip_whole_and_byte_by_byte() -> None:
    """The tap and connection frames, each with its own fd, in order, fed whole and
    one byte at a time (the fds arriving with a frame's first byte)."""
    frames_ = [C.encode(Peer.PARENT, Peer.VIONET, b, peer_id=0, seq=i + 1, with_fd=True)
               for i, b in enumerate(FD_BODIES)]
    fds = pipe_fds(len(FD_BODIES))
    whole = Decoder(Peer.VIONET, Peer.PARENT).receive(b"".join(frames_), fds)
    assert [(m.body, m.fd, m.seq) for m in whole] == \
        [(b, fd, i + 1) for i, (b, fd) in enumerate(zip(FD_BODIES, fds, strict=True))]
    dec = Decoder(Peer.VIONET, Peer.PARENT)
    one_by_one = []
    for frame, fd in zip(frames_, fds, strict=True):
        for i in range(len(frame)):
            one_by_one += dec.receive(frame[i:i + 1], [fd] if i == 0 else [])
    assert one_by_one == whole and dec.idle
    dec.check_no_stray_fds()
    for fd in fds:
        os.close(fd)


def test_tap_layout_is_explicit() -> None:
    frame = C.encode(Peer.PARENT, Peer.VIONET, C.VionetTap("vn0", 12), peer_id=0, seq=1,
                     with_fd=True)
    assert frame[:8] == bytes([1, C.FLAG_FD, 0, 8, 0, 0, 0, 20])
    assert frame[16:] == b"\0\0\0\x0c" + b"vn0" + b"\0" * 13


def tap_raw(payload: bytes) -> bytes:
    return struct.pack("!BBHIII", 1, C.FLAG_FD, int(C.MsgType.VIONET_TAP), len(payload), 0,
                       1) + payload


def tap_payload(size: int = 12, name: bytes = b"vn0" + b"\0" * 13) -> bytes:
    return struct.pack("!I", size) + name


@pytest.mark.parametrize("payload,match", [
    (tap_payload()[:-1], "payload of 19 bytes"),
    (tap_payload() + b"\0", "payload of 21 bytes"),
    (tap_payload(size=11), "vnet_hdr_sz 11"),
    (tap_payload(size=2**32 - 1), "vnet_hdr_sz"),
    (tap_payload(name=b"x" * 16), "not NUL-terminated"),
    (tap_payload(name=b"vn0\0x" + b"\0" * 11), "bytes after its NUL"),
    (tap_payload(name=b"\0" * 16), "empty"),
    (tap_payload(name=b"vn/0" + b"\0" * 12), "invalid interface name"),
    (tap_payload(name=b".." + b"\0" * 14), "invalid interface name"),
    (tap_payload(name=b"vn\xe90" + b"\0" * 12), "ASCII"),
])
def test_tap_frame_checks_every_field(payload: bytes, match: str) -> None:
    dec = Decoder(Peer.VIONET, Peer.PARENT)
    (fd,) = pipe_fds(1)
    with pytest.raises(PrivsepError, match=match):
        dec.receive(tap_raw(payload), [fd])
    assert not fd_is_open(fd)     # the refused frame's fd is closed


@pytest.mark.parametrize("body", [C.VionetTap("vn/0", 12), C.VionetTap("", 12),
                                  C.VionetTap("x" * 16, 12), C.VionetTap("vn0", 11),
                                  C.VionetTap("vné", 12)])
def test_encoder_refuses_a_bad_tap(body) -> None:
    with pytest.raises(PrivsepError, match="VIONET_TAP"):
        C.encode(Peer.PARENT, Peer.VIONET, body, peer_id=0, seq=1, with_fd=True)


def test_tap_goes_only_to_a_vionet_and_only_with_its_fd() -> None:
    with pytest.raises(PrivsepError, match="needs fd"):
        C.encode(Peer.PARENT, Peer.VIONET, C.VionetTap("vn0", 12), peer_id=0, seq=1)
    with pytest.raises(PrivsepError, match="does not accept"):
        C.encode(Peer.VIONET, Peer.PARENT, C.VionetTap("vn0", 12), peer_id=0, seq=1,
                 with_fd=True)
    unflagged = bytes([1, 0]) + tap_raw(tap_payload())[2:]
    with pytest.raises(PrivsepError, match="fd flag missing"):
        Decoder(Peer.VIONET, Peer.PARENT).receive(unflagged)
    with pytest.raises(PrivsepError, match="does not accept VIONET_TAP"):
        Decoder(Peer.PARENT, Peer.VIONET).receive(tap_raw(tap_payload()), pipe_fds(1))


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_refused_frame_closes_its_fds() -> None:
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(PrivsepError):
        Decoder(Peer.PARENT, Peer.VIONET).receive(raw(version=9), [r])
    assert not fd_is_open(r)


def test_channel_passes_fds_over_seqpacket() -> None:
    a, b = socketpair()
    parent = Channel(a, Peer.PARENT, Peer.VIONET, C.PARENT_ID)
    child = Channel(b, Peer.VIONET, Peer.PARENT, 3)
    s1, s2 = socket.socketpair()
    try:
        parent.send(C.VhostUserFd(), fd=s1.fileno())
        (m,) = child.recv()
        assert m.fd is not None and m.fd != s1.fileno()
        got = socket.socket(fileno=m.fd)
        got.sendall(b"hello")
        assert s2.recv(5) == b"hello"
        got.close()
        seq = child.send(C.TapSetOffload(0x7))
        (m,) = parent.recv()
        assert (m.body, m.seq, m.peer_id) == (C.TapSetOffload(0x7), seq, 3)
        parent.send(C.Result(0), seq=m.seq)
        (m,) = child.recv()
        assert m.body == C.Result(0) and m.seq == seq
        child.close()
        assert parent.recv() is None
    finally:
        parent.close()
        s1.close()
        s2.close()


def test_channel_closes_unclaimed_fds() -> None:
    """A frame that takes no fd but comes with one: refused, and the fd closed."""
    a, b = socketpair()
    r, w = os.pipe()
    parent = Channel(a, Peer.PARENT, Peer.VIONET, 0)
    try:
        frame = C.encode(Peer.VIONET, Peer.PARENT, C.TapSetOffload(1), peer_id=1, seq=1)
        socket.send_fds(b, [frame], [r])
        os.close(r)  # now the only read end is the copy in flight
        with pytest.raises(PrivsepError, match="unclaimed"):
            parent.recv()
        # The received copy was closed too: no reader is left anywhere.
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
    finally:
        os.close(w)
        parent.close()
        b.close()


# --- the vionet's end: ParentLink.receive_tap and the fds it accepts ----------------------


def link_pair() -> tuple[Channel, ParentLink]:
    a, b = socketpair()
    parent = Channel(a, Peer.PARENT, Peer.VIONET, C.PARENT_ID)
    link = ParentLink(b.detach(), 7, dict)
    return parent, link


def test_receive_tap_takes_a_character_device() -> None:
    parent, link = link_pair()
    dev = os.open("/dev/null", os.O_RDONLY)     # a character device, like /dev/net/tun
    try:
        parent.send(C.VionetTap("vn0", 12), fd=dev)
        fd, tap = link.receive_tap(timeout=5)
        assert tap == C.VionetTap("vn0", 12) and fd != dev
        assert os.path.samestat(os.fstat(fd), os.fstat(dev))
        os.close(fd)
    finally:
        os.close(dev)
        parent.close()
        link.channel.close()


@pytest.mark.parametrize("first", ["stats_request", "pipe_as_tap", "hang_up"])
def test_receive_tap_refuses_anything_else(first: str) -> None:
    parent, link = link_pair()
    r, w = os.pipe()
    try:
        if first == "stats_request":
            parent.send(C.StatsRequest())
        elif first == "pipe_as_tap":
            parent.send(C.VionetTap("vn0", 12), fd=r)
        else:
            parent.close()
        with pytest.raises(PrivsepError, match="VIONET_TAP|not a character device|closed"):
            link.receive_tap(timeout=5)
        if first == "pipe_as_tap":        # the received copy was closed: no reader left
            os.close(r)
            r = -1
            with pytest.raises(BrokenPipeError):
                os.write(w, b"x")
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        parent.close()
        link.channel.close()


def test_receive_tap_times_out() -> None:
    parent, link = link_pair()
    try:
        with pytest.raises(PrivsepError, match="within"):
            link.receive_tap(timeout=0.01)
    finally:
        parent.close()
        link.channel.close()


def test_connection_fd_must_be_a_unix_stream_socket() -> None:
    s1, s2 = socket.socketpair()
    d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    try:
        check_connection_fd(s1.fileno())
        s1.sendall(b"x")                         # still open: the check does not own it
        assert s2.recv(1) == b"x"
        with pytest.raises(PrivsepError, match="not an AF_UNIX stream socket"):
            check_connection_fd(d1.fileno())
        with pytest.raises(PrivsepError, match="not a socket"):
            check_connection_fd(r)
    finally:
        for s in (s1, s2, d1, d2):
            s.close()
        os.close(r)
        os.close(w)
