"""Fuzz the privsep decoder: whatever bytes and fds arrive, only PrivsepError escapes,
and every fd it was given is either handed out in a Message or closed."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmdnet.privsep import codec as C
from vmdnet.privsep.codec import Decoder, Peer, PrivsepError

# Header fields near the edges of what is valid.
VERSIONS = [0, 1, 2, 255]
FLAGS = [0, C.FLAG_FD, 2, 0x80, 0xFF]
TYPES = [0, *[int(t) for t in C.MsgType], max(C.MsgType) + 1, 0xFFFF]
LENGTHS = [0, 1, 3, 4, 5, 16, 20, C.MAX_PAYLOAD, C.MAX_PAYLOAD + 1, 0xFFFFFFFF]
# A valid VIONET_TAP payload (vnet_hdr_sz 12, "vn0") and near misses of it.
TAP_PAYLOAD = struct.pack("!I", 12) + b"vn0" + b"\0" * 13


@st.composite
def frame(draw: st.DrawFn) -> bytes:
    payload = draw(st.one_of(
        st.binary(max_size=24),
        st.sampled_from([b"{}", b'{"a":1}', b"[]", b"\0\0\0\x0c", b"\0\0\0\x01", b"\x01",
                         TAP_PAYLOAD, TAP_PAYLOAD[:-1] + b"x", TAP_PAYLOAD[:4] + b"\0" * 16])))
    length = draw(st.one_of(st.just(len(payload)), st.sampled_from(LENGTHS)))
    header = struct.pack("!BBHIII", draw(st.sampled_from(VERSIONS)), draw(st.sampled_from(FLAGS)),
                         draw(st.sampled_from(TYPES)), length,
                         draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)))
    return header + payload


def open_fds(n: int) -> list[int]:
    fds = []
    for _ in range(n):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    return fds


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame(), min_size=1, max_size=4), st.sampled_from(list(Peer)),
       st.integers(1, 7), st.integers(0, 2))
def test_only_privsep_error_escapes(parts: list[bytes], me: Peer, chunk: int,
                                    nfds: int) -> None:
    sender = Peer.VIONET if me is Peer.PARENT else Peer.PARENT
    dec = Decoder(me, sender)
    data = b"".join(parts)
    fds = open_fds(nfds)
    handed: list[int] = []
    try:
        for i in range(0, len(data), chunk):
            msgs = dec.receive(data[i:i + chunk], fds if i == 0 else [])
            handed += [m.fd for m in msgs if m.fd is not None]
            for m in msgs:
                assert m.type in C.ACCEPTS[me][sender]
    except PrivsepError:
        pass
    dec.close()
    for fd in fds:
        assert is_open(fd) == (fd in handed)
    for fd in handed:
        os.close(fd)
