/*
 * vn_vpacked.c - packed virtqueues (virtio 1.3, 2.8): the ring-type half of vn_vring.c.
 *
 * Theory of operation
 *
 * A packed virtqueue is one ring of num 16-byte descriptors {addr, len, id,
 * flags} plus two 4-byte event suppression structures: the driver's (read
 * here: does the guest want used-buffer notifications?) and the device's
 * (written here: do we want kicks?).  The guest makes a descriptor available
 * by setting its AVAIL flag bit to its wrap counter and USED to the inverse;
 * we return a chain by writing one used descriptor {id, len, flags with
 * AVAIL = USED = our used wrap counter} over the slot where the chain began,
 * then skipping as many slots as the chain had.  A chain is consecutive
 * slots linked by NEXT (wrapping at the ring's end); its buffer id is in its
 * last descriptor.  Wrap counters start at 1 and flip at every pass over
 * slot 0.
 *
 * vn_vring.c keeps one API for both ring types: the data path asks how many
 * chains are available, reads "heads", walks chains and pushes used
 * elements by head.  Here the index fields of struct vn_vring count chains:
 * vn_pk_avail_count() scans the ring from where it last stopped, records
 * each available chain (first slot, wrap counter, descriptor count, buffer
 * id) in a FIFO indexed by chain number, and a "head" is a FIFO position.
 * So vn_netq.c's batching (a TX drain, an RX window peeking chains ahead of
 * the ones it consumes) works unchanged, and the ring type is looked at
 * once per primitive call, not per descriptor.
 *
 * The guest is hostile, as for split rings:
 *   - The descriptor ring and both event structures are translated at setup
 *     and must lie in one region each, aligned as 2.8.10.1 says; slots are
 *     always reduced modulo num.
 *   - A chain's first descriptor's flags are read with acquire semantics (the
 *     guest writes them last); every descriptor is then copied once and the
 *     copy checked.  The chain's length is fixed by the scan: the walk visits
 *     exactly those slots whatever the guest writes meanwhile.
 *   - Slots scanned but not yet returned are counted and never exceed num:
 *     a chain that would run into slots still in flight is not taken (the
 *     guest made available slots it had not got back); with none in flight
 *     a chain longer than num is a loop (VN_RING_LOOP); a buffer id >= num
 *     (VN_RING_HEAD) is refused, as the guest could not match it.  As on a
 *     split ring, chains before a bad one are used before the ring breaks.
 *   - INDIRECT must be alone in its chain (2.8.19: not in a NEXT list;
 *     VN_RING_INDIRECT_NEXT), negotiated, its table a non-zero multiple of
 *     16 bytes of at most VN_MAX_INDIRECT entries inside one region
 *     (vn_indirect_table(), shared with split rings).  All of a table's
 *     entries are used (NEXT is ignored in tables, 2.8.7); INDIRECT inside a
 *     table is refused as nesting (a driver may not set it).
 *   - A wrap counter the guest gets wrong only makes descriptors look not
 *     available: they are not used, nothing else happens.
 *   - Buffers outside memory, the wrong direction, too long, too many pieces
 *     are chain faults handled by the caller, exactly as for split rings.
 *
 * Used descriptors become visible in order: the first one pushed after a
 * publish keeps its flags back until vn_pk_publish() (the data path writes
 * num_buffers after pushing), the ones after it get their flags at once; a
 * driver reads used descriptors in ring order, so it sees none of a batch
 * before the first, and the first's release store covers all.
 *
 * Notifications: the driver's structure says ENABLE, DISABLE or (with
 * EVENT_IDX) DESC = notify once the used descriptor at {offset, wrap} is
 * written; we notify when that position lies among the slots written since
 * the last notification.  Ours says DISABLE while polling, ENABLE or (with
 * EVENT_IDX) DESC at the first slot not yet seen available.
 *
 * GET_VRING_BASE returns the slot of the next chain to consume with the
 * avail wrap counter in bit 15 (as DPDK and QEMU read it; the Python side
 * repeats it in bits 16..31 as the used position, QEMU's layout);
 * SET_VRING_BASE gives the same, and the used position starts there too
 * (nothing is in flight across a stop: every chain consumed was returned).
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vn_vpacked.h"

#define DESC_SIZE 16
/* Alignment of the descriptor ring and of the event structures (2.8.10.1). */
#define DESC_ALIGN 16
#define EVENT_ALIGN 4
#define EVENT_SIZE 4
/* Chains in flight are at most num <= VN_VRING_MAX_NUM: a FIFO that size,
 * a power of two, indexed by the low bits of a free-running chain number. */
#define FIFO_SIZE VN_VRING_MAX_NUM
#define FIFO_MASK (FIFO_SIZE - 1)
#define WRAP_MASK (1u << VN_VRING_PACKED_WRAP_BIT)
#define SLOT_MASK (WRAP_MASK - 1)

_Static_assert((FIFO_SIZE & (FIFO_SIZE - 1)) == 0, "FIFO size must be a power of two");
_Static_assert(VN_VRING_MAX_NUM <= SLOT_MASK + 1, "slots must fit below the wrap bit");

#define compiler_barrier() __asm__ __volatile__("" ::: "memory")

/* The packed descriptor as laid out in guest memory (little-endian). */
struct pk_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t id;
	uint16_t flags;
};

/* An event suppression structure (2.8.10). */
struct pk_event {
	uint16_t off_wrap;
	uint16_t flags;
};

/* One available chain, as the scan found it. */
struct pk_chain {
	uint16_t slot;          /* its first slot */
	uint16_t ndesc;         /* slots it covers */
	uint16_t id;            /* buffer id, from its last descriptor */
	uint8_t wrap;           /* avail wrap counter at its first slot */
	uint8_t pad_;
};

struct vn_packed {
	struct pk_desc *ring;
	struct pk_event *driver_event;  /* the guest's: notify it? (read only) */
	struct pk_event *device_event;  /* ours: kick us? */
	uint32_t scan_slot;             /* next slot to look at for new chains */
	uint32_t scan_wrap;
	uint32_t used_slot;             /* where the next used descriptor goes */
	uint32_t used_wrap;
	uint32_t in_flight;             /* slots scanned, not yet returned */
	uint32_t since_signal;          /* used slots written since the last signal, capped */
	uint32_t held;                  /* a used descriptor's flags wait for publish */
	uint32_t held_slot;
	uint16_t held_flags;
	uint16_t pad_;
	struct pk_chain fifo[FIFO_SIZE];
};

/**
 * vn_pk_free() - free packed ring state
 * @pk: the state, or NULL
 */
void vn_pk_free(struct vn_packed *pk)
{
	free(pk);
}

static int is_aligned(const void *p, uintptr_t align)
{
	return ((uintptr_t)p & (align - 1)) == 0;
}

/**
 * vn_pk_translate() - (re)translate a packed ring's areas through @mem
 * @vq: a packed queue whose num, uaddrs and pk are set
 * @mem: the memory table
 *
 * desc_uaddr is the descriptor ring, avail_uaddr the driver event
 * structure, used_uaddr the device event structure (vhost-user's
 * SET_VRING_ADDR for packed rings).
 *
 * Return: 0, -EFAULT (outside guest memory) or -EINVAL (misaligned, no
 * size); on error the queue is left not ready
 */
int vn_pk_translate(struct vn_vring *vq, const struct vn_mem *mem)
{
	struct vn_packed *pk = vq->pk;
	void *ring, *drv, *dev;

	vq->ready = 0;
	if (vq->num == 0 || !pk)
		return -EINVAL;
	ring = vn_uaddr_to_host(mem, vq->desc_uaddr, (uint64_t)DESC_SIZE * vq->num);
	drv = vn_uaddr_to_host(mem, vq->avail_uaddr, EVENT_SIZE);
	dev = vn_uaddr_to_host(mem, vq->used_uaddr, EVENT_SIZE);
	if (!ring || !drv || !dev)
		return -EFAULT;
	if (!is_aligned(ring, DESC_ALIGN) || !is_aligned(drv, EVENT_ALIGN) ||
	    !is_aligned(dev, EVENT_ALIGN))
		return -EINVAL;
	pk->ring = ring;
	pk->driver_event = drv;
	pk->device_event = dev;
	vq->ready = 1;
	return 0;
}

/**
 * vn_pk_setup() - start a packed queue at SET_VRING_BASE's position
 * @vq: the queue; num, uaddrs and features are set, vq->packed is 1
 * @mem: the memory table
 * @base: slot of the first chain to consume, avail wrap counter in bit 15
 *
 * Return: 0, -EINVAL (slot >= num, misaligned), -EFAULT (outside memory) or
 * -ENOMEM
 */
int vn_pk_setup(struct vn_vring *vq, const struct vn_mem *mem, uint16_t base)
{
	struct vn_packed *pk;
	int rc;

	if ((uint32_t)(base & SLOT_MASK) >= vq->num)
		return -EINVAL;
	if (!vq->pk) {
		vq->pk = calloc(1, sizeof(*vq->pk));
		if (!vq->pk)
			return -ENOMEM;
	}
	pk = vq->pk;
	rc = vn_pk_translate(vq, mem);
	if (rc)
		return rc;
	pk->scan_slot = pk->used_slot = base & SLOT_MASK;
	pk->scan_wrap = pk->used_wrap = (base & WRAP_MASK) != 0;
	pk->in_flight = 0;
	pk->held = 0;
	pk->since_signal = 0;
	vq->last_avail_idx = vq->avail_idx_shadow = vq->last_used_idx = 0;
	return 0;
}

/**
 * vn_pk_base() - the position to resume from (GET_VRING_BASE)
 * @vq: a packed queue that was set up
 *
 * Return: slot of the next chain not consumed, avail wrap counter in bit 15
 */
uint16_t vn_pk_base(const struct vn_vring *vq)
{
	const struct vn_packed *pk = vq->pk;
	uint32_t slot = pk->scan_slot, wrap = pk->scan_wrap;

	if (vq->avail_idx_shadow != vq->last_avail_idx) {
		const struct pk_chain *ch = &pk->fifo[vq->last_avail_idx & FIFO_MASK];

		slot = ch->slot;
		wrap = ch->wrap;
	}
	return (uint16_t)(slot | (wrap ? WRAP_MASK : 0));
}

/* Move (slot, wrap) on by one slot. */
static void slot_next(const struct vn_vring *vq, uint32_t *slot, uint32_t *wrap)
{
	if (++*slot == vq->num) {
		*slot = 0;
		*wrap ^= 1;
	}
}

/* Is a descriptor with @flags available in the pass with wrap counter @wrap? */
static int desc_avail(uint16_t flags, uint32_t wrap)
{
	uint32_t a = (flags & VN_VRING_PACKED_DESC_F_AVAIL) != 0;
	uint32_t u = (flags & VN_VRING_PACKED_DESC_F_USED) != 0;

	return a == wrap && u != wrap;
}

/* Copy descriptor @i of @table once into split form (id in next). */
static void pk_desc_read(const void *table, uint32_t i, struct vn_vring_desc *d)
{
	struct pk_desc raw;

	memcpy(&raw, (const uint8_t *)table + (size_t)i * DESC_SIZE, sizeof(raw));
	compiler_barrier();
	d->addr = le64toh(raw.addr);
	d->len = le32toh(raw.len);
	d->flags = le16toh(raw.flags);
	d->next = le16toh(raw.id);
}

/*
 * Record the chain starting at the scan position, whose first descriptor
 * the guest made available.  Return 0, or why the ring is inconsistent
 * (enum vn_ring_err; nothing recorded).
 */
static int scan_chain(struct vn_vring *vq)
{
	struct vn_packed *pk = vq->pk;
	uint32_t slot = pk->scan_slot, wrap = pk->scan_wrap, n = 0;
	struct vn_vring_desc d;
	struct pk_chain *ch;

	for (;;) {
		if (++n > vq->num)
			return VN_RING_LOOP;
		if (pk->in_flight + n > vq->num)
			return VN_RING_AVAIL_IDX;
		pk_desc_read(pk->ring, slot, &d);
		slot_next(vq, &slot, &wrap);
		if (!(d.flags & VN_VRING_DESC_F_NEXT))
			break;
	}
	if (d.next >= vq->num)
		return VN_RING_HEAD;
	ch = &pk->fifo[vq->avail_idx_shadow & FIFO_MASK];
	ch->slot = (uint16_t)pk->scan_slot;
	ch->wrap = (uint8_t)pk->scan_wrap;
	ch->ndesc = (uint16_t)n;
	ch->id = d.next;
	pk->scan_slot = slot;
	pk->scan_wrap = wrap;
	pk->in_flight += n;
	vq->avail_idx_shadow++;
	return 0;
}

/**
 * vn_pk_avail_count() - scan for newly available chains; count the unconsumed
 * @vq: a ready packed queue
 *
 * A bad chain behind chains not yet consumed is left where it is (the scan
 * stops before it and finds it again next time), so the good chains before
 * it are used first, as on a split ring, where a bad head is found only
 * when it is reached.  That also makes a chain that runs into slots still
 * in flight wait until they come back; with nothing in flight it is longer
 * than the ring: a loop.
 *
 * Return: chains available from last_avail_idx on, or -1 when the ring is
 * (or became) broken
 */
int vn_pk_avail_count(struct vn_vring *vq)
{
	struct vn_packed *pk = vq->pk;

	for (;;) {
		uint16_t fl = le16toh(__atomic_load_n(&pk->ring[pk->scan_slot].flags,
						      __ATOMIC_ACQUIRE));
		int err;

		if (!desc_avail(fl, pk->scan_wrap))
			break;
		err = scan_chain(vq);
		if (err && vq->avail_idx_shadow != vq->last_avail_idx)
			break;          /* deal with it once it is at the front */
		if (err) {
			vn_vring_break(vq, err);
			return -1;
		}
	}
	return (uint16_t)(vq->avail_idx_shadow - vq->last_avail_idx);
}

/**
 * vn_pk_avail_head() - the "head" of the chain numbered @idx: its FIFO position
 * @vq: a ready packed queue
 * @idx: chain number, from last_avail_idx up to avail_idx_shadow (excluded)
 * @head: receives the FIFO position
 *
 * Return: 0, or -1 for a chain not scanned (the queue is then broken)
 */
int vn_pk_avail_head(struct vn_vring *vq, uint16_t idx, uint16_t *head)
{
	if ((uint16_t)(idx - vq->last_avail_idx) >=
	    (uint16_t)(vq->avail_idx_shadow - vq->last_avail_idx)) {
		vn_vring_break(vq, VN_RING_HEAD);
		return -1;
	}
	*head = idx & FIFO_MASK;
	return 0;
}

/* Walk an indirect table: every entry is a buffer (only WRITE counts). */
static int walk_table(struct vn_vring *vq, const struct vn_mem *mem, const void *t,
		      uint32_t n, int want_write, struct iovec *iov, uint32_t max_iov,
		      uint64_t max_len, struct vn_chain *c)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		struct vn_vring_desc d;

		pk_desc_read(t, i, &d);
		if (d.flags & VN_VRING_DESC_F_INDIRECT) {
			vn_vring_break(vq, VN_RING_INDIRECT_NESTED);
			return -1;
		}
		vn_chain_add(mem, &d, want_write, iov, max_iov, max_len, c);
	}
	return 0;
}

/**
 * vn_pk_chain_walk() - walk the chain at FIFO position @head into iovecs
 * @vq: a ready packed queue
 * @mem: the memory table
 * @head: from vn_pk_avail_head()
 * @want_write: 1 for device-writable buffers (RX), 0 for device-readable (TX)
 * @iov: receives the buffers' pieces
 * @max_iov: room in @iov
 * @max_len: bytes beyond which the chain is faulted VN_WALK_TOO_LONG
 * @c: the result; c->fault says whether the packet is usable
 *
 * Return: 0 (look at c->fault), or -1 when the ring is inconsistent (the
 * queue is then broken)
 */
int vn_pk_chain_walk(struct vn_vring *vq, const struct vn_mem *mem, uint16_t head,
		     int want_write, struct iovec *iov, uint32_t max_iov, uint64_t max_len,
		     struct vn_chain *c)
{
	const struct pk_chain *ch = &vq->pk->fifo[head & FIFO_MASK];
	uint32_t slot = ch->slot, wrap = ch->wrap, i;

	memset(c, 0, sizeof(*c));
	c->head = head;
	if (slot >= vq->num || ch->ndesc == 0 || ch->ndesc > vq->num) {
		vn_vring_break(vq, VN_RING_HEAD);
		return -1;
	}
	for (i = 0; i < ch->ndesc; i++) {
		struct vn_vring_desc d;

		pk_desc_read(vq->pk->ring, slot, &d);
		if (d.flags & VN_VRING_DESC_F_INDIRECT) {
			const void *t;

			if (ch->ndesc != 1) {
				vn_vring_break(vq, VN_RING_INDIRECT_NEXT);
				return -1;
			}
			t = vn_indirect_table(vq, mem, &d, 0);
			if (!t)
				return -1;
			return walk_table(vq, mem, t, d.len / DESC_SIZE, want_write, iov,
					  max_iov, max_len, c);
		}
		vn_chain_add(mem, &d, want_write, iov, max_iov, max_len, c);
		slot_next(vq, &slot, &wrap);
	}
	return 0;
}

/* Store a used descriptor's flags: the guest may then read it. */
static void flags_store(struct vn_packed *pk, uint32_t slot, uint16_t flags)
{
	__atomic_store_n(&pk->ring[slot].flags, htole16(flags), __ATOMIC_RELEASE);
}

/**
 * vn_pk_push() - write the used descriptor of the chain at @head
 * @vq: a ready packed queue
 * @head: its FIFO position
 * @len: bytes written into the chain (0 for TX)
 *
 * The first push after a publish keeps its flags back until vn_pk_publish().
 */
void vn_pk_push(struct vn_vring *vq, uint16_t head, uint32_t len)
{
	struct vn_packed *pk = vq->pk;
	const struct pk_chain *ch = &pk->fifo[head & FIFO_MASK];
	struct pk_desc *u = &pk->ring[pk->used_slot];
	uint16_t flags = pk->used_wrap ?
		(VN_VRING_PACKED_DESC_F_AVAIL | VN_VRING_PACKED_DESC_F_USED) : 0;

	if (len)
		flags |= VN_VRING_DESC_F_WRITE;
	__atomic_store_n(&u->id, htole16(ch->id), __ATOMIC_RELAXED);
	__atomic_store_n(&u->len, htole32(len), __ATOMIC_RELAXED);
	if (pk->held) {
		flags_store(pk, pk->used_slot, flags);
	} else {
		pk->held = 1;
		pk->held_slot = pk->used_slot;
		pk->held_flags = flags;
	}
	/* Skip the chain's slots: ndesc <= num, so at most one pass over slot 0. */
	pk->used_slot += ch->ndesc;
	if (pk->used_slot >= vq->num) {
		pk->used_slot -= vq->num;
		pk->used_wrap ^= 1;
	}
	if (pk->since_signal < 2 * vq->num)
		pk->since_signal += ch->ndesc;
	pk->in_flight = pk->in_flight >= ch->ndesc ? pk->in_flight - ch->ndesc : 0;
	vq->last_used_idx++;
}

/* The device event structure's position: the first slot not seen available. */
static uint16_t scan_pos(const struct vn_packed *pk)
{
	return (uint16_t)(pk->scan_slot | (pk->scan_wrap ? WRAP_MASK : 0));
}

/**
 * vn_pk_publish() - make pushed used descriptors visible; re-arm kicks
 * @vq: a ready packed queue
 *
 * With EVENT_IDX and kicks enabled, also moves the kick request to the
 * first slot not yet seen available.
 */
void vn_pk_publish(struct vn_vring *vq)
{
	struct vn_packed *pk = vq->pk;

	if (pk->held) {
		flags_store(pk, pk->held_slot, pk->held_flags);
		pk->held = 0;
	}
	if (vq->event_idx && vq->kick_enabled)
		__atomic_store_n(&pk->device_event->off_wrap, htole16(scan_pos(pk)),
				 __ATOMIC_RELAXED);
}

/* A (slot, wrap) position as a number modulo 2 * num that grows by one per slot. */
static uint32_t linear_pos(const struct vn_vring *vq, uint32_t slot, uint32_t wrap)
{
	return (slot + (wrap ? vq->num : 0)) % (2 * vq->num);
}

/**
 * vn_pk_need_signal() - does the guest want a used-buffer notification now?
 * @vq: a ready packed queue, after vn_pk_publish() and a full fence
 *
 * Starts counting the slots written anew (pk->since_signal).
 *
 * Return: 1 to notify, 0 when the guest asked not to be
 */
int vn_pk_need_signal(struct vn_vring *vq)
{
	struct vn_packed *pk = vq->pk;
	uint32_t span = 2 * vq->num;
	uint32_t now = linear_pos(vq, pk->used_slot, pk->used_wrap);
	uint32_t written = pk->since_signal, ev;
	uint16_t fl, off_wrap;
	int valid = vq->signalled_valid;

	vq->signalled_valid = 1;
	pk->since_signal = 0;
	fl = le16toh(__atomic_load_n(&pk->driver_event->flags, __ATOMIC_RELAXED)) & 3;
	if (fl == VN_VRING_EVENT_F_DISABLE)
		return 0;
	if (fl != VN_VRING_EVENT_F_DESC || !vq->event_idx || !valid)
		return 1;
	off_wrap = le16toh(__atomic_load_n(&pk->driver_event->off_wrap, __ATOMIC_RELAXED));
	ev = linear_pos(vq, (off_wrap & SLOT_MASK) % vq->num, (off_wrap & WRAP_MASK) != 0);
	/* Notify when the requested position is among those written since (all
	 * of them, once a whole lap of both wrap counters was written). */
	return written >= span || (now + span - ev - 1) % span < written;
}

/**
 * vn_pk_notify_disable() - ask the guest not to kick (we are polling)
 * @vq: a ready packed queue
 */
void vn_pk_notify_disable(struct vn_vring *vq)
{
	__atomic_store_n(&vq->pk->device_event->flags, htole16(VN_VRING_EVENT_F_DISABLE),
			 __ATOMIC_RELAXED);
}

/**
 * vn_pk_notify_request() - ask the guest to kick: any new chain, or (EVENT_IDX)
 * the one at the first slot not seen available
 * @vq: a ready packed queue
 *
 * The caller fences and looks at the ring again afterwards.
 */
void vn_pk_notify_request(struct vn_vring *vq)
{
	struct vn_packed *pk = vq->pk;

	if (vq->event_idx) {
		__atomic_store_n(&pk->device_event->off_wrap, htole16(scan_pos(pk)),
				 __ATOMIC_RELAXED);
		__atomic_store_n(&pk->device_event->flags, htole16(VN_VRING_EVENT_F_DESC),
				 __ATOMIC_RELEASE);
	} else {
		__atomic_store_n(&pk->device_event->flags, htole16(VN_VRING_EVENT_F_ENABLE),
				 __ATOMIC_RELAXED);
	}
}
