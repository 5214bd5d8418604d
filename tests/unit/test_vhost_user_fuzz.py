"""Fuzz the vhost-user Backend: whatever the front-end sends, only VhostUserError escapes,
and after close() every fd it was given is closed."""

from __future__ import annotations

import os
import struct
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))

import test_vhost_user_frames as fr  # noqa: E402

from vmdnet.vhost_user import Backend, VhostUserError  # noqa: E402
from vmdnet.vhost_user.backend import SUPPORTED_PROTOCOL_FEATURES  # noqa: E402

OFFER = fr.F_VERSION_1 | fr.F_MRG_RXBUF | fr.F_EVENT_IDX | fr.F_RING_PACKED

INTERESTING = [0, 1, 2, 3, 7, 8, 64, 100, 255, 256, 0x100, 0x1FF, 0x8000, 0xFFFF, 0x10000,
               fr.UVA, fr.UVA + 0x10000, fr.MEM_SIZE, 2**32 - 1, 2**63, 2**64 - 1]
# Sizes the codec accepts for some request, plus near misses.
SIZES = [0, 4, 8, 12, 32, 40, 48, 72, 264, 268, 296]


@st.composite
def payloads(draw: st.DrawFn, size: int) -> bytes:
    """Payload of `size` bytes made of interesting u64/u32 words or plain random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=size, max_size=size))
    words = b""
    while len(words) < size:
        if draw(st.booleans()):
            words += struct.pack("=Q", draw(st.sampled_from(INTERESTING)))
        else:
            words += struct.pack("=I", draw(st.sampled_from(INTERESTING)) & 0xFFFFFFFF)
    return words[:size]


# Request numbers by payload kind (vhost-user.rst).
NO_PAYLOAD = [1, 3, 4, 15, 17, 34, 36]
U64_REQ = [2, 16, 20]
STATE_REQ = [8, 10, 11, 18]
FILE_REQ = [12, 13, 14]
small = st.one_of(st.integers(0, 3), st.sampled_from(INTERESTING))
u32 = small.map(lambda v: v & 0xFFFFFFFF)


def region(gpa: int, size: int, uva: int, off: int) -> bytes:
    return struct.pack("=QQQQ", gpa, size, uva, off)


regions = st.builds(region, small, st.sampled_from([0, 0x1000, fr.MEM_SIZE, 2**64 - 1]),
                    st.sampled_from([fr.UVA, fr.UVA + 0x1000, 0, 2**64 - 0x1000]), small)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[bytes, int]:
    """A known request with a plausible payload and (mostly) the right fd count."""
    kind = draw(st.sampled_from(["none", "u64", "state", "file", "addr", "mem", "region"]))
    nfds = 0
    if kind == "none":
        request, payload = draw(st.sampled_from(NO_PAYLOAD)), b""
    elif kind == "u64":
        value = draw(st.one_of(small, st.integers(0, 2**64 - 1),
                               st.just(OFFER | fr.F_PROTOCOL_FEATURES)))
        request, payload = draw(st.sampled_from(U64_REQ)), struct.pack("=Q", value)
    elif kind == "state":
        request = draw(st.sampled_from(STATE_REQ))
        payload = struct.pack("=II", draw(u32), draw(u32))
    elif kind == "file":
        nofd = draw(st.booleans())
        value = draw(st.integers(0, 3)) | (fr.NOFD if nofd else 0) | draw(
            st.sampled_from([0, 0, 0, 0x200, 255]))
        request, payload, nfds = draw(st.sampled_from(FILE_REQ)), struct.pack("=Q", value), 1 - nofd
    elif kind == "addr":
        index = draw(st.integers(0, 3))
        desc, used, avail = fr.ring_addrs(index % 2) if draw(st.booleans()) else (
            draw(small), draw(small), draw(small))
        request = fr.SET_VRING_ADDR
        payload = struct.pack("=IIQQQQ", index, draw(st.sampled_from([0, 0, 1])), desc, used,
                              avail, 0)
    elif kind == "mem":
        body = draw(st.lists(regions, max_size=9))
        request, nfds = fr.SET_MEM_TABLE, len(body)
        payload = struct.pack("=II", len(body), 0) + b"".join(body)
    else:
        request = draw(st.sampled_from([fr.ADD_MEM_REG, fr.REM_MEM_REG]))
        payload, nfds = bytes(8) + draw(regions), int(request == fr.ADD_MEM_REG)
    nfds = max(0, nfds + draw(st.sampled_from([0, 0, 0, 0, -1, 1])))
    flags = draw(st.sampled_from([1, 1, 9]))
    return struct.pack("=III", request, flags, len(payload)) + payload, nfds


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, int]:
    """One message (maybe malformed) and how many fds ride with it."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=64)), draw(st.integers(0, 2))
    if kind <= 7:
        return draw(well_formed())
    request = draw(st.one_of(st.integers(0, 41), st.sampled_from([99, 2**32 - 1])))
    flags = draw(st.sampled_from([1, 1, 1, 9, 0, 2, 5, 0x11]))
    size = draw(st.sampled_from(SIZES))
    nfds = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 9]))
    return struct.pack("=III", request, flags, size) + draw(payloads(size)), nfds


def new_fd() -> int:
    return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)


def feed(b: Backend, data: bytes, fds: list[int], cuts: list[int]) -> None:
    """Feed one message in pieces cut at `cuts`; its fds ride with the first piece."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for i, (start, end) in enumerate(zip(points, points[1:], strict=False)):
        b.receive(data[start:end], fds if i == 0 else [])
    if len(points) == 1:
        b.receive(b"", fds)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.integers(0, len(fr.handshake())),
       msgs=st.lists(st.tuples(messages(), st.lists(st.integers(0, 300), max_size=3)),
                     max_size=12),
       stop_returns=st.sampled_from([None, 0, 5, 0xFFFF]))
def test_only_vhost_user_error_escapes_and_no_fd_leaks(prefix: int, msgs: list,
                                                       stop_returns: int | None) -> None:
    before = fr.open_fds()
    b = Backend(OFFER, queue_pairs=1, protocol_features=SUPPORTED_PROTOCOL_FEATURES,
                stop_vring=lambda index: stop_returns)
    seq = fr.handshake()
    for _data, fds in seq[prefix:]:  # drop the fds of the part of the handshake we skip
        for fd in fds:
            os.close(fd)
    stream = [(data, fds, []) for data, fds in seq[:prefix]]
    stream += [(data, [new_fd() for _ in range(nfds)], cuts) for (data, nfds), cuts in msgs]
    for data, fds, cuts in stream:
        try:
            feed(b, data, fds, cuts)
        except VhostUserError:
            b.disconnect()
        b.data_to_send()
    b.close()
    assert fr.open_fds() - before == set(), "fds leaked"
