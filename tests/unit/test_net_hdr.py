"""virtio_net_hdr (vmdnet.virtio.net_hdr.VnetHdr): the 10/12/20-byte wire forms.

The expected bytes are written out by hand from the virtio 1.x layout
(section 5.1.6, little-endian), not produced by struct with the module's own
format strings.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmdnet.offload import VnetHdr
from vmdnet.virtio.net_hdr import HDR_SIZES

SAMPLE = VnetHdr(flags=0x01, gso_type=0x84, hdr_len=0x0236, gso_size=0x05A8,
                 csum_start=0x0022, csum_offset=0x0010, num_buffers=0x0003,
                 hash_value=0xA1B2C3D4, hash_report=0x0007)
# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (all LE)
SAMPLE_10 = bytes([0x01, 0x84, 0x36, 0x02, 0xA8, 0x05, 0x22, 0x00, 0x10, 0x00])
SAMPLE_12 = SAMPLE_10 + bytes([0x03, 0x00])                       # num_buffers
SAMPLE_20 = SAMPLE_12 + bytes([0xD4, 0xC3, 0xB2, 0xA1, 0x07, 0x00, 0x00, 0x00])
BY_SIZE = {10: SAMPLE_10, 12: SAMPLE_12, 20: SAMPLE_20}

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
headers = st.builds(VnetHdr, flags=u8, gso_type=u8, hdr_len=u16, gso_size=u16,
                    csum_start=u16, csum_offset=u16, num_buffers=u16, hash_value=u32,
                    hash_report=u16)


@pytest.mark.parametrize("size", HDR_SIZES)
def test_pack_matches_hand_built_bytes(size: int) -> None:
    assert SAMPLE.pack(size) == BY_SIZE[size]


@pytest.mark.parametrize("size", HDR_SIZES)
def test_unpack_hand_built_bytes(size: int) -> None:
    h = VnetHdr.unpack(BY_SIZE[size] + b"\xee" * 7, size)   # trailing frame bytes ignored
    assert (h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset) == \
        (0x01, 0x84, 0x0236, 0x05A8, 0x0022, 0x0010)
    assert h.num_buffers == (0 if size == 10 else 3)
    assert (h.hash_value, h.hash_report) == ((0xA1B2C3D4, 7) if size == 20 else (0, 0))


def test_default_size_is_12() -> None:
    assert SAMPLE.pack() == SAMPLE_12
    assert VnetHdr.unpack(SAMPLE_12) == VnetHdr.unpack(SAMPLE_12, 12)


def test_hash_padding_ignored_on_unpack() -> None:
    raw = SAMPLE_20[:18] + b"\xff\xff"
    assert VnetHdr.unpack(raw, 20) == VnetHdr.unpack(SAMPLE_20, 20)


@given(h=headers, size=st.sampled_from(HDR_SIZES))
def test_round_trip(h: VnetHdr, size: int) -> None:
    raw = h.pack(size)
    assert len(raw) == size
    back = VnetHdr.unpack(raw, size)
    keep = {10: 6, 12: 7, 20: 9}[size]
    names = ["flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset",
             "num_buffers", "hash_value", "hash_report"]
    for i, name in enumerate(names):
        assert getattr(back, name) == (getattr(h, name) if i < keep else 0), name
    assert back.pack(size) == raw


@pytest.mark.parametrize("size", [0, 8, 11, 16, 24])
def test_bad_size_refused(size: int) -> None:
    with pytest.raises(ValueError, match="size"):
        SAMPLE.pack(size)
    with pytest.raises(ValueError, match="size"):
        VnetHdr.unpack(bytes(32), size)


@pytest.mark.parametrize("size", HDR_SIZES)
def test_short_buffer_refused(size: int) -> None:
    with pytest.raises(ValueError, match=f"need {size} bytes"):
        VnetHdr.unpack(bytes(size - 1), size)


def test_out_of_range_field_refused() -> None:
    with pytest.raises(struct.error):       # nothing is silently truncated
        VnetHdr(hdr_len=0x10000).pack()
