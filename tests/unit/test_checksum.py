"""vmdnet.offload.checksum (csrc/vn_csum.c) against the pure-Python reference.

The reference (`pktlib.ref_checksum`) adds big-endian 16-bit words one by one;
the C code sums wide little-endian words with SSE2 lanes that it drains every
256 KiB, so buffers on both sides of that boundary and every alignment are
compared.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pktlib import ref_checksum

from vmdnet.offload import checksum

# Where the C SSE2 loop empties its 32-bit lanes (VN_CSUM_DRAIN_BLOCKS * 64).
SSE2_DRAIN_BYTES = 4096 * 64
u16 = st.integers(0, 0xFFFF)


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert ref_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2


def test_ipv4_header_known_answer() -> None:
    # A textbook IPv4 header whose checksum field is b861.
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ~checksum(hdr) & 0xFFFF == 0xB861
    assert checksum(hdr[:10] + b"\xb8\x61" + hdr[12:]) == 0xFFFF


def test_edges() -> None:
    assert checksum(b"") == 0
    assert checksum(b"", 0xFFFF) == 0xFFFF
    assert checksum(b"", 0x1234) == 0x1234
    assert checksum(b"\xab") == 0xAB00             # odd byte is the high byte of a word
    assert checksum(b"\xff\xff" * 1000) == 0xFFFF  # never folds to 0 from non-zero
    assert checksum(bytes(5000)) == 0


@pytest.mark.parametrize("initial", [-1, 0x10000])
def test_initial_out_of_range(initial: int) -> None:
    with pytest.raises(ValueError):
        checksum(b"ab", initial)


@settings(max_examples=300)
@given(data=st.binary(max_size=5000), initial=u16)
def test_matches_reference(data: bytes, initial: int) -> None:
    assert checksum(data, initial) == ref_checksum(data, initial)


@settings(max_examples=200)
@given(length=st.integers(0, 5000), seed=st.integers(0, 2**32), initial=u16)
def test_matches_reference_all_lengths(length: int, seed: int, initial: int) -> None:
    # st.binary favours short strings; this spreads lengths over 0..5000.
    data = random.Random(seed).randbytes(length)
    assert checksum(data, initial) == ref_checksum(data, initial)


@settings(max_examples=150)
@given(data=st.binary(min_size=1, max_size=3000), start=st.integers(0, 63),
       cut=st.integers(0, 63), initial=u16)
def test_unaligned_memoryview_slices(data: bytes, start: int, cut: int, initial: int) -> None:
    view = memoryview(bytearray(data))[start:len(data) - cut]
    assert checksum(view, initial) == ref_checksum(bytes(view), initial)


@settings(max_examples=50)
@given(length=st.integers(0, 5000), fill=st.sampled_from([0x00, 0xFF, 0x80, 0x7F]),
       initial=st.sampled_from([0, 1, 0xFFFE, 0xFFFF]))
def test_uniform_fill_edges(length: int, fill: int, initial: int) -> None:
    data = bytes([fill]) * length
    assert checksum(data, initial) == ref_checksum(data, initial)


@pytest.mark.parametrize("length", [
    SSE2_DRAIN_BYTES - 1, SSE2_DRAIN_BYTES, SSE2_DRAIN_BYTES + 1, SSE2_DRAIN_BYTES + 63,
    2 * SSE2_DRAIN_BYTES + 130, 3 * SSE2_DRAIN_BYTES + 7,
])
def test_long_buffers_cross_lane_drain(length: int) -> None:
    # All-0xff maximises every lane: an overflow before the drain would show.
    ones = b"\xff" * length
    assert checksum(ones) == ref_checksum(ones)
    rnd = random.Random(length).randbytes(length)
    assert checksum(rnd, 0x4321) == ref_checksum(rnd, 0x4321)
    view = memoryview(rnd)[3:]
    assert checksum(view) == ref_checksum(bytes(view))


def test_long_random_os_bytes() -> None:
    data = os.urandom(SSE2_DRAIN_BYTES * 2 + 5)
    assert checksum(data) == ref_checksum(data)


def test_accepts_every_buffer_type() -> None:
    data = bytes(range(256)) * 3
    want = ref_checksum(data)
    assert checksum(data) == checksum(bytearray(data)) == checksum(memoryview(data)) == want


@pytest.fixture(params=["simd", "sse2"])
def csum_path(request: pytest.FixtureRequest):
    """Run a test on the AVX2 path (when the CPU has it) and on the SSE2/scalar one."""
    from vmdnet._native import lib
    used = lib.vn_csum_select(1 if request.param == "simd" else 0)
    if request.param == "simd" and not used:
        pytest.skip("this CPU has no AVX2: only the SSE2/scalar path exists here")
    yield request.param
    lib.vn_csum_select(1)


@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 127, 128, 129, 1448, 65536 + 7,
                                    SSE2_DRAIN_BYTES + 65])
def test_both_paths_match_reference(csum_path: str, length: int) -> None:
    data = random.Random(length).randbytes(length + 5)
    for start in (0, 1, 2, 5):
        view = memoryview(data)[start:start + length]
        assert checksum(view, 0x1357) == ref_checksum(bytes(view), 0x1357)
