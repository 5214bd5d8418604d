/*
 * vn_vring.c - virtqueues in guest memory: setup, chain walking, used ring, notifications.
 *
 * Theory of operation
 *
 * A split virtqueue (virtio 1.3, 2.7) is three areas the guest allocated: the
 * descriptor table, the available ring (guest -> us) and the used ring
 * (us -> guest).  The guest is hostile and runs concurrently with us, so:
 *
 *   - Every area is translated once at setup (vn_vring_setup(), again after
 *     a memory table change with vn_vring_translate()) and must lie inside
 *     one region for all num entries, the event-index fields included, and
 *     be aligned as the spec says; afterwards indices are reduced modulo num,
 *     so no access can leave the areas.
 *   - Each guest field is read once into a local, then checked, then used
 *     (descriptors are copied whole behind a compiler barrier; ring entries
 *     and indices are atomic loads), so the guest changing memory under us
 *     cannot make a checked value differ from the used one.
 *   - avail->idx is read with acquire semantics before the ring entries it
 *     covers; used->idx is written with release semantics after the used
 *     elements.  A full fence separates publishing used->idx from reading the
 *     guest's interrupt suppression (used_event / NO_INTERRUPT), and enabling
 *     kicks from re-reading avail->idx, the two classic lost-wakeup races.
 *
 * Chain walking follows NEXT links with a counter: a table of n entries can
 * hold no chain longer than n, so a longer walk is a loop.  A chain may end
 * in one INDIRECT descriptor (2.7.5.3.2: "zero or more normal chained
 * descriptors followed by a single descriptor with flags=INDIRECT"); its
 * table is checked (negotiated, no NEXT on it, length a non-zero multiple of
 * 16 and at most VN_MAX_INDIRECT entries, inside one region, no INDIRECT
 * inside) and walked with its own bound.
 *
 * Two kinds of trouble: a ring that is inconsistent (head or next index out
 * of range, loop, bad indirect table, avail->idx more than num ahead) breaks
 * the queue: vq->broken records why and every later call refuses to work
 * until the device is reset.  A chain whose ring structure is fine but whose
 * buffers are unusable (outside guest memory, wrong direction, too many
 * pieces, too long) is reported in vn_chain.fault and the caller drops that
 * packet.  The walk always finishes the chain's structure, even after a
 * fault, so a loop is reported as a loop whatever else is wrong with it.
 *
 * Zero-length descriptors are legal and skipped.  Buffers may span two
 * adjacent regions (one iovec each); indirect tables and the rings may not.
 *
 * Packed rings (VIRTIO_F_RING_PACKED) live in vn_vpacked.c: every public
 * function here checks vq->packed once on entry and hands a packed queue
 * over, so the data path calls one API for both ring types.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vn_vring.h"
#include "vn_vpacked.h"

#define DESC_SIZE 16
/* Spec alignment of the three areas (2.7, "Virtqueue Part / Alignment"). */
#define DESC_ALIGN 16
#define AVAIL_ALIGN 2
#define USED_ALIGN 4

/* The compiler may not assume memory is unchanged across this point. */
#define compiler_barrier() __asm__ __volatile__("" ::: "memory")

/**
 * vn_vring_new() - allocate an unconfigured queue with its work area
 *
 * Return: the queue, or NULL when out of memory
 */
struct vn_vring *vn_vring_new(void)
{
	struct vn_vring *vq = calloc(1, sizeof(*vq));

	if (!vq)
		return NULL;
	vq->work = vn_work_alloc();
	if (!vq->work) {
		free(vq);
		return NULL;
	}
	vq->kick_fd = -1;
	vq->call_fd = -1;
	return vq;
}

/**
 * vn_vring_free() - free a queue from vn_vring_new() (fds are the caller's)
 * @vq: the queue, or NULL
 */
void vn_vring_free(struct vn_vring *vq)
{
	if (!vq)
		return;
	vn_work_free(vq->work);
	vn_pk_free(vq->pk);
	free(vq);
}

static int is_aligned(const void *p, uintptr_t align)
{
	return ((uintptr_t)p & (align - 1)) == 0;
}

/**
 * vn_vring_translate() - (re)translate the ring addresses through @mem
 * @vq: a queue whose num and uaddrs are set
 * @mem: the memory table
 *
 * Each area must lie inside one region for num entries plus its event
 * field, and be aligned as the spec requires.
 *
 * Return: 0, -EFAULT (outside guest memory) or -EINVAL (misaligned); on error
 * the queue is left not ready
 */
int vn_vring_translate(struct vn_vring *vq, const struct vn_mem *mem)
{
	uint64_t num = vq->num;
	void *desc, *avail, *used;

	if (vq->packed)
		return vn_pk_translate(vq, mem);
	vq->ready = 0;
	if (num == 0)
		return -EINVAL;
	desc = vn_uaddr_to_host(mem, vq->desc_uaddr, DESC_SIZE * num);
	/* flags, idx, ring[num], used_event */
	avail = vn_uaddr_to_host(mem, vq->avail_uaddr, 2 + 2 + 2 * num + 2);
	/* flags, idx, ring[num] of {id, len}, avail_event */
	used = vn_uaddr_to_host(mem, vq->used_uaddr, 2 + 2 + 8 * num + 2);
	if (!desc || !avail || !used)
		return -EFAULT;
	if (!is_aligned(desc, DESC_ALIGN) || !is_aligned(avail, AVAIL_ALIGN) ||
	    !is_aligned(used, USED_ALIGN))
		return -EINVAL;
	vq->desc = desc;
	vq->avail = avail;
	vq->used = used;
	vq->ready = 1;
	return 0;
}

static uint16_t *used_event(struct vn_vring *vq)
{
	return &vq->avail->ring[vq->num];
}

static uint16_t *avail_event(struct vn_vring *vq)
{
	return (uint16_t *)(void *)&vq->used->ring[vq->num];
}

/**
 * vn_vring_setup() - configure a queue from SET_VRING_NUM/BASE/ADDR values
 * @vq: the queue
 * @mem: the memory table the addresses refer to
 * @num: Queue Size, a power of two from 1 to VN_VRING_MAX_NUM
 * @desc_uaddr: descriptor table, in the VMM's address space
 * @avail_uaddr: available ring, likewise
 * @used_uaddr: used ring, likewise
 * @base: the first avail index to consume (SET_VRING_BASE); packed: its
 *        slot with the avail wrap counter in bit 15
 * @features: negotiated feature bits (INDIRECT_DESC, EVENT_IDX, RING_PACKED
 *            are used)
 *
 * Split: our used index starts from the guest's used->idx (where a previous
 * backend left it).  Packed: the used position starts at @base.  Kicks
 * start enabled; RX state (a parked packet) is forgotten.  A packed ring's
 * size need not be a power of two (2.8.10.1).
 *
 * Return: 0, or -EINVAL (bad num or base, misaligned), -EFAULT (outside
 * memory) or -ENOMEM
 */
int vn_vring_setup(struct vn_vring *vq, const struct vn_mem *mem, uint32_t num,
		   uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr,
		   uint16_t base, uint64_t features)
{
	uint32_t packed = (features >> VN_F_RING_PACKED) & 1;
	int rc;

	vq->ready = 0;
	if (num == 0 || num > VN_VRING_MAX_NUM || (!packed && (num & (num - 1)) != 0))
		return -EINVAL;
	vq->num = num;
	vq->packed = packed;
	vq->desc = NULL;
	vq->avail = NULL;
	vq->used = NULL;
	vq->desc_uaddr = desc_uaddr;
	vq->avail_uaddr = avail_uaddr;
	vq->used_uaddr = used_uaddr;
	rc = packed ? vn_pk_setup(vq, mem, base) : vn_vring_translate(vq, mem);
	if (rc) {
		vq->ready = 0;
		vq->num = 0;
		vq->packed = 0;
		return rc;
	}
	vq->features = features;
	vq->event_idx = (features >> VN_F_RING_EVENT_IDX) & 1;
	vq->indirect = (features >> VN_F_RING_INDIRECT_DESC) & 1;
	if (!packed) {
		vq->last_avail_idx = base;
		vq->avail_idx_shadow = base;
		vq->last_used_idx = le16toh(__atomic_load_n(&vq->used->idx, __ATOMIC_RELAXED));
	}
	vq->signalled_valid = 0;
	vq->broken = VN_RING_OK;
	vn_work_reset(vq->work);
	vn_vring_notify_enable(vq);
	return 0;
}

/**
 * vn_vring_reset() - stop a queue (GET_VRING_BASE, device reset)
 * @vq: the queue
 *
 * A packet parked for RX is dropped with the queue's state.
 *
 * Return: the next avail index it would have consumed (packed: the slot of
 * the next chain with the avail wrap counter in bit 15)
 */
uint16_t vn_vring_reset(struct vn_vring *vq)
{
	uint16_t base = vq->packed && vq->num ? vn_pk_base(vq) : vq->last_avail_idx;

	vq->ready = 0;
	vq->num = 0;
	vq->desc = NULL;
	vq->avail = NULL;
	vq->used = NULL;
	vq->broken = VN_RING_OK;
	vq->signalled_valid = 0;
	vq->packed = 0;
	vn_work_reset(vq->work);
	return base;
}

/**
 * vn_vring_break() - mark the queue broken (the first reason sticks)
 * @vq: the queue
 * @reason: enum vn_ring_err
 */
void vn_vring_break(struct vn_vring *vq, int reason)
{
	if (!vq->broken)
		vq->broken = reason;
}

/**
 * vn_vring_avail_count() - how many chains the guest has made available
 * @vq: a ready queue
 *
 * Reads avail->idx (acquire: the ring entries it covers are visible after).
 *
 * Return: entries from last_avail_idx on, or -1 when avail->idx is more than
 * num ahead (the queue is then broken) or the queue is not usable
 */
int vn_vring_avail_count(struct vn_vring *vq)
{
	uint16_t idx, n;

	if (!vq->ready || vq->broken)
		return -1;
	if (vq->packed)
		return vn_pk_avail_count(vq);
	idx = le16toh(__atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE));
	n = (uint16_t)(idx - vq->last_avail_idx);
	if (n > vq->num) {
		vn_vring_break(vq, VN_RING_AVAIL_IDX);
		return -1;
	}
	vq->avail_idx_shadow = idx;
	return n;
}

/**
 * vn_vring_avail_head() - read the head index at avail position @idx
 * @vq: a ready queue
 * @idx: free-running avail index (reduced modulo num here)
 * @head: receives the head
 *
 * Return: 0, or -1 when the head is out of range (the queue is then broken)
 */
int vn_vring_avail_head(struct vn_vring *vq, uint16_t idx, uint16_t *head)
{
	uint16_t h;

	if (vq->packed)
		return vn_pk_avail_head(vq, idx, head);
	h = le16toh(__atomic_load_n(&vq->avail->ring[idx & (vq->num - 1)], __ATOMIC_RELAXED));
	if (h >= vq->num) {
		vn_vring_break(vq, VN_RING_HEAD);
		return -1;
	}
	*head = h;
	return 0;
}

/* Copy descriptor @i of @table once; the copy is what gets checked and used. */
static void desc_read(const void *table, uint32_t i, struct vn_vring_desc *d)
{
	memcpy(d, (const uint8_t *)table + (size_t)i * DESC_SIZE, sizeof(*d));
	compiler_barrier();
	d->addr = le64toh(d->addr);
	d->len = le32toh(d->len);
	d->flags = le16toh(d->flags);
	d->next = le16toh(d->next);
}

/* Account one data descriptor into the chain @c (static: inlined in the split walk). */
static void add_buffer(const struct vn_mem *mem, const struct vn_vring_desc *d,
		       int want_write, struct iovec *iov, uint32_t max_iov,
		       uint64_t max_len, struct vn_chain *c)
{
	int n;

	if (d->len == 0)
		return;
	c->len += d->len;
	if (c->fault)
		return;
	if (((d->flags & VN_VRING_DESC_F_WRITE) != 0) != (want_write != 0)) {
		c->fault = VN_WALK_DIRECTION;
		return;
	}
	if (c->len > max_len) {
		c->fault = VN_WALK_TOO_LONG;
		return;
	}
	n = vn_gpa_to_iov(mem, d->addr, d->len, iov + c->niov, max_iov - c->niov);
	if (n == VN_IOV_FAULT)
		c->fault = VN_WALK_DESC_ADDR;
	else if (n == VN_IOV_FULL)
		c->fault = VN_WALK_TOO_MANY_IOV;
	else
		c->niov += (uint32_t)n;
}

/**
 * vn_chain_add() - account one data descriptor into the chain @c
 * @mem: the memory table
 * @d: the descriptor (a checked copy)
 * @want_write: 1 for device-writable buffers (RX), 0 for device-readable (TX)
 * @iov: the chain's iovecs
 * @max_iov: room in @iov
 * @max_len: bytes beyond which the chain is faulted VN_WALK_TOO_LONG
 * @c: the chain so far; a problem is recorded in c->fault (first one sticks)
 */
void vn_chain_add(const struct vn_mem *mem, const struct vn_vring_desc *d, int want_write,
		  struct iovec *iov, uint32_t max_iov, uint64_t max_len, struct vn_chain *c)
{
	add_buffer(mem, d, want_write, iov, max_iov, max_len, c);
}

static int walk_fail(struct vn_vring *vq, int reason)
{
	vn_vring_break(vq, reason);
	return -1;
}

/* Check an INDIRECT descriptor; return its table, or NULL with the queue broken. */
static const void *indirect_table(struct vn_vring *vq, const struct vn_mem *mem,
				  const struct vn_vring_desc *d, int in_indirect)
{
	const void *t = NULL;
	int err = VN_RING_OK;

	if (!vq->indirect)
		err = VN_RING_INDIRECT_FEATURE;
	else if (in_indirect)
		err = VN_RING_INDIRECT_NESTED;
	else if (d->flags & VN_VRING_DESC_F_NEXT)
		err = VN_RING_INDIRECT_NEXT;
	else if (d->len == 0 || d->len % DESC_SIZE || d->len / DESC_SIZE > VN_MAX_INDIRECT)
		err = VN_RING_INDIRECT_LEN;
	else if (!(t = vn_gpa_to_host(mem, d->addr, d->len)))
		err = VN_RING_INDIRECT_ADDR;
	if (err)
		vn_vring_break(vq, err);
	return t;
}

/**
 * vn_indirect_table() - check an INDIRECT descriptor and find its table
 * @vq: the queue (INDIRECT_DESC negotiated?)
 * @mem: the memory table
 * @d: the descriptor (a checked copy)
 * @in_indirect: it was found inside an indirect table
 *
 * Return: the table in host memory, or NULL with the queue broken
 */
const void *vn_indirect_table(struct vn_vring *vq, const struct vn_mem *mem,
			      const struct vn_vring_desc *d, int in_indirect)
{
	return indirect_table(vq, mem, d, in_indirect);
}

/* vn_chain_walk() for a split ring. */
static int split_chain_walk(struct vn_vring *vq, const struct vn_mem *mem, uint16_t head,
			    int want_write, struct iovec *iov, uint32_t max_iov,
			    uint64_t max_len, struct vn_chain *c)
{
	const void *table = vq->desc;
	uint32_t tsize = vq->num, seen = 0, idx = head;
	int in_indirect = 0;

	memset(c, 0, sizeof(*c));
	c->head = head;
	if (head >= vq->num)
		return walk_fail(vq, VN_RING_HEAD);
	for (;;) {
		struct vn_vring_desc d;

		if (++seen > tsize)
			return walk_fail(vq, VN_RING_LOOP);
		desc_read(table, idx, &d);
		if (d.flags & VN_VRING_DESC_F_INDIRECT) {
			table = indirect_table(vq, mem, &d, in_indirect);
			if (!table)
				return -1;
			tsize = d.len / DESC_SIZE;
			seen = 0;
			idx = 0;
			in_indirect = 1;
			continue;
		}
		add_buffer(mem, &d, want_write, iov, max_iov, max_len, c);
		if (!(d.flags & VN_VRING_DESC_F_NEXT))
			return 0;
		if (d.next >= tsize)
			return walk_fail(vq, VN_RING_NEXT);
		idx = d.next;
	}
}

/**
 * vn_chain_walk() - walk the chain at @head into iovecs
 * @vq: a ready queue
 * @mem: the memory table
 * @head: head index, as read from the avail ring
 * @want_write: 1 for device-writable buffers (RX), 0 for device-readable (TX)
 * @iov: receives the buffers' pieces
 * @max_iov: room in @iov
 * @max_len: bytes beyond which the chain is faulted VN_WALK_TOO_LONG
 * @c: the result; c->fault says whether the packet is usable
 *
 * Return: 0 (look at c->fault), or -1 when the ring is inconsistent (the
 * queue is then broken)
 */
int vn_chain_walk(struct vn_vring *vq, const struct vn_mem *mem, uint16_t head,
		  int want_write, struct iovec *iov, uint32_t max_iov, uint64_t max_len,
		  struct vn_chain *c)
{
	if (vq->packed)
		return vn_pk_chain_walk(vq, mem, head, want_write, iov, max_iov, max_len, c);
	return split_chain_walk(vq, mem, head, want_write, iov, max_iov, max_len, c);
}

/**
 * vn_vring_push() - write one used element (not yet visible to the guest)
 * @vq: a ready queue
 * @head: the chain's head index
 * @len: bytes written into the chain (0 for TX)
 */
void vn_vring_push(struct vn_vring *vq, uint16_t head, uint32_t len)
{
	struct vn_vring_used_elem *e;

	if (vq->packed) {
		vn_pk_push(vq, head, len);
		return;
	}
	e = &vq->used->ring[vq->last_used_idx & (vq->num - 1)];
	e->id = htole32(head);
	e->len = htole32(len);
	vq->last_used_idx++;
}

/**
 * vn_vring_publish() - make pushed used elements visible; re-arm kicks
 * @vq: a ready queue
 *
 * With EVENT_IDX and kicks enabled, also asks the guest to kick once it
 * makes the next entry available (avail_event = last_avail_idx).
 */
void vn_vring_publish(struct vn_vring *vq)
{
	if (vq->packed) {
		vn_pk_publish(vq);
		return;
	}
	__atomic_store_n(&vq->used->idx, htole16(vq->last_used_idx), __ATOMIC_RELEASE);
	if (vq->event_idx && vq->kick_enabled)
		__atomic_store_n(avail_event(vq), htole16(vq->last_avail_idx), __ATOMIC_RELAXED);
}

/* Split ring: does the guest want a notification for the used elements
 * published since the last call?  Records this call's used index. */
static int split_need_signal(struct vn_vring *vq)
{
	uint16_t new_idx = vq->last_used_idx, old = vq->signalled_used;
	int valid = vq->signalled_valid;

	vq->signalled_used = new_idx;
	vq->signalled_valid = 1;
	if (vq->event_idx) {
		uint16_t ev = le16toh(__atomic_load_n(used_event(vq), __ATOMIC_RELAXED));

		return !valid || (uint16_t)(new_idx - ev - 1) < (uint16_t)(new_idx - old);
	} else {
		uint16_t fl = le16toh(__atomic_load_n(&vq->avail->flags, __ATOMIC_RELAXED));

		return !(fl & VN_VRING_AVAIL_F_NO_INTERRUPT);
	}
}

/**
 * vn_vring_signal() - notify the guest of used elements, unless it opted out
 * @vq: a ready queue, after vn_vring_publish()
 *
 * Split ring with EVENT_IDX: notify when used->idx moved past used_event
 * since the last call; without: unless the guest set
 * VRING_AVAIL_F_NO_INTERRUPT.  Packed ring: per the driver event
 * suppression structure (vn_pk_need_signal()).
 *
 * Return: 1 when the guest was notified (or would have been, with no
 * call_fd), 0 when it asked not to be
 */
int vn_vring_signal(struct vn_vring *vq)
{
	uint64_t one = 1;
	int need;

	/* Our used index (flags) store must be visible before we read the guest's wish. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	need = vq->packed ? vn_pk_need_signal(vq) : split_need_signal(vq);
	if (!need)
		return 0;
	if (vq->call_fd >= 0) {
		/* Fails only when the eventfd counter would overflow: it is set anyway. */
		ssize_t rc = write(vq->call_fd, &one, sizeof(one));

		(void)rc;
	}
	return 1;
}

/**
 * vn_vring_notify_disable() - ask the guest not to kick (we are polling)
 * @vq: a ready queue
 *
 * With EVENT_IDX, avail_event is simply no longer advanced.
 */
void vn_vring_notify_disable(struct vn_vring *vq)
{
	vq->kick_enabled = 0;
	if (!vq->ready)
		return;
	if (vq->packed)
		vn_pk_notify_disable(vq);
	else if (!vq->event_idx)
		__atomic_store_n(&vq->used->flags, htole16(VN_VRING_USED_F_NO_NOTIFY),
				 __ATOMIC_RELAXED);
}

/**
 * vn_vring_notify_enable() - ask the guest to kick, then look again
 * @vq: a ready queue
 *
 * Call before sleeping on kick_fd; if this returns 1 the guest may have
 * added work before it saw the request, so do not sleep: process it.
 *
 * With EVENT_IDX the kick is asked for the first entry past avail_idx_shadow
 * (the avail->idx last read), not past last_avail_idx: RX may be waiting
 * with chains it has already seen but that are too small for the packet at
 * hand, and needs a kick for the next buffers the guest posts.  (With the two
 * equal, as whenever nothing is left unconsumed, it is the same request.)
 *
 * Return: 1 when chains are available, 0 when none, -1 when the queue is
 * broken or not ready
 */
int vn_vring_notify_enable(struct vn_vring *vq)
{
	int n;

	vq->kick_enabled = 1;
	if (!vq->ready || vq->broken)
		return -1;
	if (vq->packed)
		vn_pk_notify_request(vq);
	else if (vq->event_idx)
		__atomic_store_n(avail_event(vq), htole16(vq->avail_idx_shadow), __ATOMIC_RELAXED);
	else
		__atomic_store_n(&vq->used->flags, 0, __ATOMIC_RELAXED);
	/* The request must be visible before we re-read avail->idx. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	n = vn_vring_avail_count(vq);
	return n < 0 ? -1 : n != 0;
}
