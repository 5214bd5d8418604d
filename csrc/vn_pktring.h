/*
 * vn_pktring.h - a small single-producer single-consumer ring of whole frames.
 */
#ifndef VN_PKTRING_H
#define VN_PKTRING_H

#include <stddef.h>
#include <stdint.h>

/* VN_CDEF_BEGIN */
/*
 * Slots of one ring: DHCP is a handful of packets per lease, so a few slots
 * absorb a burst of retransmissions; more would only queue stale requests.
 */
#define VN_PKTRING_SLOTS 16
/*
 * Bytes one slot holds: an untagged Ethernet frame at a 1500-byte MTU (1514)
 * plus room for tags; DHCP messages are far smaller (RFC 2131 minimum 576).
 */
#define VN_PKTRING_SLOT_SZ 1600

/*
 * One ring.  The producer writes only head, the consumer only tail; each
 * reads the other's index with acquire and publishes its own with release.
 * efd (an eventfd, or -1) is signalled by the producer after each put.
 */
struct vn_pktring {
	uint32_t head;                  /* next slot to fill (producer) */
	uint32_t tail;                  /* next slot to take (consumer) */
	int efd;                        /* eventfd signalled on put; -1: none */
	uint32_t len[VN_PKTRING_SLOTS];
	uint8_t data[VN_PKTRING_SLOTS][VN_PKTRING_SLOT_SZ];
};

void vn_pktring_init(struct vn_pktring *r, int efd);
int vn_pktring_put(struct vn_pktring *r, const uint8_t *frame, size_t len);
int vn_pktring_get(struct vn_pktring *r, uint8_t *buf, size_t cap);
uint32_t vn_pktring_count(const struct vn_pktring *r);
/* VN_CDEF_END */

const uint8_t *vn_pktring_peek(const struct vn_pktring *r, uint32_t *len);
void vn_pktring_pop(struct vn_pktring *r);
uint8_t *vn_pktring_slot(struct vn_pktring *r);
int vn_pktring_commit(struct vn_pktring *r, size_t len);

#endif
