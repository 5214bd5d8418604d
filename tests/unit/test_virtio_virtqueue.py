"""Split/packed virtqueue layout numbers against the spec's struct definitions (2.7, 2.8)."""

from __future__ import annotations

import ctypes

import pytest

from vmdnet.virtio import virtqueue as V


class VringDesc(ctypes.LittleEndianStructure):  # struct virtq_desc (2.7.5)
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint32),
                ("flags", ctypes.c_uint16), ("next", ctypes.c_uint16)]


class VringUsedElem(ctypes.LittleEndianStructure):  # struct virtq_used_elem (2.7.8)
    _fields_ = [("id", ctypes.c_uint32), ("len", ctypes.c_uint32)]


def avail(num: int) -> type:
    class Avail(ctypes.LittleEndianStructure):  # struct virtq_avail with used_event
        _pack_ = 1
        _fields_ = [("flags", ctypes.c_uint16), ("idx", ctypes.c_uint16),
                    ("ring", ctypes.c_uint16 * num), ("used_event", ctypes.c_uint16)]
    return Avail


def used(num: int) -> type:
    class Used(ctypes.LittleEndianStructure):  # struct virtq_used with avail_event
        _pack_ = 1
        _fields_ = [("flags", ctypes.c_uint16), ("idx", ctypes.c_uint16),
                    ("ring", VringUsedElem * num), ("avail_event", ctypes.c_uint16)]
    return Used


def test_descriptor_layout() -> None:
    assert V.VRING_DESC_SIZE == ctypes.sizeof(VringDesc) == 16
    assert (V.VRING_DESC_OFF_ADDR, V.VRING_DESC_OFF_LEN, V.VRING_DESC_OFF_FLAGS,
            V.VRING_DESC_OFF_NEXT) == (VringDesc.addr.offset, VringDesc.len.offset,
                                       VringDesc.flags.offset, VringDesc.next.offset)
    assert (V.VRING_DESC_F_NEXT, V.VRING_DESC_F_WRITE, V.VRING_DESC_F_INDIRECT) == (1, 2, 4)
    assert V.VRING_AVAIL_F_NO_INTERRUPT == 1 and V.VRING_USED_F_NO_NOTIFY == 1


@pytest.mark.parametrize("num", [1, 2, 256, 1024, 32768])
def test_ring_sizes_and_event_offsets(num: int) -> None:
    a, u = avail(num), used(num)
    assert V.desc_table_size(num) == num * ctypes.sizeof(VringDesc)
    assert V.avail_ring_size(num, event_idx=True) == ctypes.sizeof(a)
    assert V.avail_ring_size(num, event_idx=False) == a.used_event.offset
    assert V.used_ring_size(num, event_idx=True) == ctypes.sizeof(u)
    assert V.used_ring_size(num, event_idx=False) == u.avail_event.offset
    assert V.used_event_offset(num) == a.used_event.offset
    assert V.avail_event_offset(num) == u.avail_event.offset
    assert (V.VRING_AVAIL_OFF_IDX, V.VRING_AVAIL_OFF_RING) == (a.idx.offset, a.ring.offset)
    assert (V.VRING_USED_OFF_IDX, V.VRING_USED_OFF_RING) == (u.idx.offset, u.ring.offset)
    assert [al for _, al in V.split_ring_areas(num, False)] == [16, 2, 4]
    assert V.packed_ring_areas(num)[0] == (16 * num, 16)


def test_queue_size_rules() -> None:
    assert V.VIRTQUEUE_MAX_SIZE == 32768
    assert all(V.valid_queue_size(1 << k) for k in range(16))
    for bad in (0, 3, 100, 255, 32767, 65536, -1):
        assert not V.valid_queue_size(bad)
    assert V.valid_queue_size(100, packed=True) and not V.valid_queue_size(32769, packed=True)


@pytest.mark.parametrize("event, new, old, notify", [
    (5, 6, 3, True),         # event index inside [old, new)
    (3, 6, 3, True),         # at the start of the window
    (6, 6, 3, False),        # at new: not yet passed
    (2, 6, 3, False),        # before the window
    (0xFFFF, 2, 0xFFFE, True),  # window wraps past 0xffff
    (3, 2, 0xFFFE, False),
    (7, 7, 7, False),        # nothing new
])
def test_need_event(event: int, new: int, old: int, notify: bool) -> None:
    assert V.need_event(event, new, old) is notify
