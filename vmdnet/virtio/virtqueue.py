"""Virtqueue layout as data: split ring (virtio 1.3, 2.7) and the packed ring sizes (2.8).

No I/O and no ring walking here (that is per-packet work and lives in C); this
module gives the sizes, offsets, flags and alignment rules that both the C
walker and the vhost-user validation use.

Split ring, three areas in guest memory, little-endian (VERSION_1):

  descriptor table  num x 16 B   { le64 addr; le32 len; le16 flags; le16 next; }
  available ring    le16 flags; le16 idx; le16 ring[num]; le16 used_event (EVENT_IDX)
  used ring         le16 flags; le16 idx; { le32 id; le32 len; }[num]; le16 avail_event (EVENT_IDX)

The event fields always sit right after the ring arrays; they exist (and must
be inside guest memory) only when VIRTIO_RING_F_EVENT_IDX is negotiated.
"""

from __future__ import annotations

# Largest queue size the spec allows (2.6: "Queue Size ... maximum 32768"); also
# the largest value whose ring indices fit the free-running le16 idx arithmetic.
VIRTQUEUE_MAX_SIZE = 32768

# --- split ring descriptor ---
VRING_DESC_SIZE = 16
VRING_DESC_OFF_ADDR = 0
VRING_DESC_OFF_LEN = 8
VRING_DESC_OFF_FLAGS = 12
VRING_DESC_OFF_NEXT = 14
VRING_DESC_F_NEXT = 1  # buffer continues via the next field
VRING_DESC_F_WRITE = 2  # device-writable buffer (RX); otherwise device-readable
VRING_DESC_F_INDIRECT = 4  # buffer holds a table of descriptors (INDIRECT_DESC)

# --- split ring available ring ---
VRING_AVAIL_OFF_FLAGS = 0
VRING_AVAIL_OFF_IDX = 2
VRING_AVAIL_OFF_RING = 4
VRING_AVAIL_ELEM_SIZE = 2
VRING_AVAIL_F_NO_INTERRUPT = 1  # driver asks: do not notify (interrupt) on used buffers

# --- split ring used ring ---
VRING_USED_OFF_FLAGS = 0
VRING_USED_OFF_IDX = 2
VRING_USED_OFF_RING = 4
VRING_USED_ELEM_SIZE = 8  # le32 id, le32 len
VRING_USED_F_NO_NOTIFY = 1  # device asks: do not kick on new available buffers

# Alignment of each area (2.7, "Virtqueue Part / Alignment" table).
VRING_DESC_ALIGN = 16
VRING_AVAIL_ALIGN = 2
VRING_USED_ALIGN = 4

# --- packed ring (2.8): one descriptor ring plus two event suppression structs ---
VRING_PACKED_DESC_SIZE = 16  # { le64 addr; le32 len; le16 id; le16 flags; }
VRING_PACKED_DESC_F_AVAIL = 1 << 7
VRING_PACKED_DESC_F_USED = 1 << 15
VRING_PACKED_EVENT_SIZE = 4  # { le16 off_wrap; le16 flags; }
VRING_PACKED_EVENT_FLAG_ENABLE = 0
VRING_PACKED_EVENT_FLAG_DISABLE = 1
VRING_PACKED_EVENT_FLAG_DESC = 2
VRING_PACKED_DESC_ALIGN = 16
VRING_PACKED_EVENT_ALIGN = 4


def valid_queue_size(num: int, packed: bool = False) -> bool:
    """True when `num` is a legal queue size: 1..32768, a power of two for split rings."""
    if not 1 <= num <= VIRTQUEUE_MAX_SIZE:
        return False
    return packed or num & (num - 1) == 0


def desc_table_size(num: int) -> int:
    """Bytes of a split ring descriptor table of `num` entries."""
    return VRING_DESC_SIZE * num


def avail_ring_size(num: int, event_idx: bool) -> int:
    """Bytes of the available ring, with used_event when `event_idx`."""
    return VRING_AVAIL_OFF_RING + VRING_AVAIL_ELEM_SIZE * num + (2 if event_idx else 0)


def used_ring_size(num: int, event_idx: bool) -> int:
    """Bytes of the used ring, with avail_event when `event_idx`."""
    return VRING_USED_OFF_RING + VRING_USED_ELEM_SIZE * num + (2 if event_idx else 0)


def used_event_offset(num: int) -> int:
    """Offset of used_event inside the available ring (EVENT_IDX)."""
    return VRING_AVAIL_OFF_RING + VRING_AVAIL_ELEM_SIZE * num


def avail_event_offset(num: int) -> int:
    """Offset of avail_event inside the used ring (EVENT_IDX)."""
    return VRING_USED_OFF_RING + VRING_USED_ELEM_SIZE * num


def split_ring_areas(num: int, event_idx: bool) -> tuple[tuple[int, int], ...]:
    """(size, alignment) of the descriptor table, available ring and used ring."""
    return ((desc_table_size(num), VRING_DESC_ALIGN),
            (avail_ring_size(num, event_idx), VRING_AVAIL_ALIGN),
            (used_ring_size(num, event_idx), VRING_USED_ALIGN))


def packed_ring_areas(num: int) -> tuple[tuple[int, int], ...]:
    """(size, alignment) of the packed descriptor ring, driver and device event areas."""
    return ((VRING_PACKED_DESC_SIZE * num, VRING_PACKED_DESC_ALIGN),
            (VRING_PACKED_EVENT_SIZE, VRING_PACKED_EVENT_ALIGN),
            (VRING_PACKED_EVENT_SIZE, VRING_PACKED_EVENT_ALIGN))


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """The EVENT_IDX rule (2.7.7/2.7.10): notify when event_idx is in [old_idx, new_idx).

    All three are free-running le16 ring indices; the comparison is modulo 2**16.
    """
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF
