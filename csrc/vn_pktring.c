/*
 * vn_pktring.c - a small single-producer single-consumer ring of whole frames.
 *
 * Theory of operation
 *
 * vionet answers some guest traffic itself (DHCP on local interfaces).  The
 * TX thread copies such a frame into an intercept ring instead of writing it
 * to the tap; a Python thread takes it out, computes the answer and puts the
 * reply into an inject ring that the RX thread delivers to the guest before
 * anything from the tap.  Each ring has exactly one producer thread and one
 * consumer thread, so two free-running 32-bit indexes suffice: head - tail
 * is the fill level (unsigned wrap-around), a slot is index % SLOTS.  The
 * consumer may only read a slot after loading head with acquire, the
 * producer may only reuse one after loading tail with acquire; each
 * publishes its own index with release after touching the slot.  Slots
 * are fixed-size: a frame longer than a slot is refused, never cut.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vn_pktring.h"

_Static_assert((VN_PKTRING_SLOTS & (VN_PKTRING_SLOTS - 1)) == 0,
	       "slot count must be a power of two (indexes wrap at 2^32)");

/**
 * vn_pktring_init() - make a ring empty
 * @r: the ring
 * @efd: eventfd to signal on each put, or -1
 */
void vn_pktring_init(struct vn_pktring *r, int efd)
{
	__atomic_store_n(&r->head, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&r->tail, 0, __ATOMIC_RELEASE);
	r->efd = efd;
}

/**
 * vn_pktring_count() - frames waiting in a ring
 * @r: the ring
 *
 * Return: how many frames the consumer could take now
 */
uint32_t vn_pktring_count(const struct vn_pktring *r)
{
	uint32_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
	uint32_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);

	return head - tail;
}

/**
 * vn_pktring_slot() - the free slot the producer fills next
 * @r: the ring
 *
 * Return: VN_PKTRING_SLOT_SZ writable bytes, or NULL when the ring is full
 */
uint8_t *vn_pktring_slot(struct vn_pktring *r)
{
	uint32_t head = r->head;        /* only the producer writes it */
	uint32_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);

	if (head - tail >= VN_PKTRING_SLOTS)
		return NULL;
	return r->data[head % VN_PKTRING_SLOTS];
}

/**
 * vn_pktring_commit() - publish the slot vn_pktring_slot() returned
 * @r: the ring
 * @len: bytes written into it
 *
 * Return: 0, -EINVAL when @len exceeds a slot, -ENOBUFS when the ring is full
 */
int vn_pktring_commit(struct vn_pktring *r, size_t len)
{
	uint32_t head = r->head;
	uint64_t one = 1;

	if (len > VN_PKTRING_SLOT_SZ)
		return -EINVAL;
	if (head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) >= VN_PKTRING_SLOTS)
		return -ENOBUFS;
	r->len[head % VN_PKTRING_SLOTS] = (uint32_t)len;
	__atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
	if (r->efd >= 0) {
		/* EAGAIN means the counter is full: the consumer wakes anyway. */
		ssize_t n = write(r->efd, &one, sizeof(one));

		(void)n;
	}
	return 0;
}

/**
 * vn_pktring_put() - copy a frame into the ring (producer)
 * @r: the ring
 * @frame: the frame
 * @len: its length
 *
 * Return: 0, -EINVAL when longer than a slot, -ENOBUFS when the ring is full
 */
int vn_pktring_put(struct vn_pktring *r, const uint8_t *frame, size_t len)
{
	uint8_t *slot;

	if (!r || (!frame && len))
		return -EINVAL;
	if (len > VN_PKTRING_SLOT_SZ)
		return -EINVAL;
	slot = vn_pktring_slot(r);
	if (!slot)
		return -ENOBUFS;
	if (len)
		memcpy(slot, frame, len);
	return vn_pktring_commit(r, len);
}

/**
 * vn_pktring_peek() - the oldest frame, left in the ring (consumer)
 * @r: the ring
 * @len: set to its length
 *
 * Return: the frame, or NULL when the ring is empty
 */
const uint8_t *vn_pktring_peek(const struct vn_pktring *r, uint32_t *len)
{
	uint32_t tail = r->tail;        /* only the consumer writes it */

	if (__atomic_load_n(&r->head, __ATOMIC_ACQUIRE) == tail)
		return NULL;
	*len = r->len[tail % VN_PKTRING_SLOTS];
	return r->data[tail % VN_PKTRING_SLOTS];
}

/**
 * vn_pktring_pop() - free the oldest frame's slot (consumer, after peek)
 * @r: the ring
 */
void vn_pktring_pop(struct vn_pktring *r)
{
	__atomic_store_n(&r->tail, r->tail + 1, __ATOMIC_RELEASE);
}

/**
 * vn_pktring_get() - copy the oldest frame out and free its slot (consumer)
 * @r: the ring
 * @buf: where to copy it
 * @cap: bytes @buf holds (VN_PKTRING_SLOT_SZ always suffices)
 *
 * Return: its length, -EAGAIN when the ring is empty, -EINVAL for a bad
 * argument or a @buf too small (the frame stays)
 */
int vn_pktring_get(struct vn_pktring *r, uint8_t *buf, size_t cap)
{
	const uint8_t *f;
	uint32_t len = 0;

	if (!r || !buf)
		return -EINVAL;
	f = vn_pktring_peek(r, &len);
	if (!f)
		return -EAGAIN;
	if (len > cap || len > VN_PKTRING_SLOT_SZ)
		return -EINVAL;
	memcpy(buf, f, len);
	vn_pktring_pop(r);
	return (int)len;
}
