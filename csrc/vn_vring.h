/*
 * vn_vring.h - virtqueues in guest memory (split; packed in vn_vpacked.c): setup, chain
 * walking, used ring, notifications.
 */
#ifndef VN_VRING_H
#define VN_VRING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vn_mem.h"

/* VN_CDEF_BEGIN */
/* Largest Queue Size of a split ring (virtio 1.3, 2.7: at most 32768). */
#define VN_VRING_MAX_NUM 32768

#define VN_VRING_DESC_F_NEXT 1
#define VN_VRING_DESC_F_WRITE 2
#define VN_VRING_DESC_F_INDIRECT 4
#define VN_VRING_AVAIL_F_NO_INTERRUPT 1
#define VN_VRING_USED_F_NO_NOTIFY 1

/* Transport feature bits the ring code looks at (virtio 1.3, 6). */
#define VN_F_RING_INDIRECT_DESC 28
#define VN_F_RING_EVENT_IDX 29
#define VN_F_RING_PACKED 34

/* Packed ring (virtio 1.3, 2.8): descriptor flags and the wrap bit of an index. */
#define VN_VRING_PACKED_DESC_F_AVAIL 0x80
#define VN_VRING_PACKED_DESC_F_USED 0x8000
#define VN_VRING_PACKED_WRAP_BIT 15
/* Event suppression flags (2.8.10). */
#define VN_VRING_EVENT_F_ENABLE 0
#define VN_VRING_EVENT_F_DISABLE 1
#define VN_VRING_EVENT_F_DESC 2

/*
 * Most descriptors one indirect table may hold.  The spec bounds a chain by
 * the Queue Size only; real drivers build far smaller tables (Linux
 * virtio-net: MAX_SKB_FRAGS + 2), and QEMU refuses tables beyond 1024
 * entries (VIRTQUEUE_MAX_SIZE), so a guest that works with QEMU works here.
 */
#define VN_MAX_INDIRECT 1024

/*
 * Most iovecs one chain (TX) or one packet's buffers (RX) may use: Linux's
 * UIO_MAXIOV, the most writev()/readv() take.  A chain needing more pieces is
 * dropped, not treated as a broken ring.
 */
#define VN_CHAIN_MAX_IOV 1024

/* Why a queue is broken: the ring itself is inconsistent, stop and reset. */
enum vn_ring_err {
	VN_RING_OK = 0,
	VN_RING_AVAIL_IDX = 1,          /* avail->idx ran more than num ahead of us (packed:
					 * more than num descriptors available) */
	VN_RING_HEAD = 2,               /* a head index >= num (packed: a buffer id >= num) */
	VN_RING_NEXT = 3,               /* a next index >= the table size */
	VN_RING_LOOP = 4,               /* more descriptors than the table holds */
	VN_RING_INDIRECT_FEATURE = 5,   /* INDIRECT without VIRTIO_RING_F_INDIRECT_DESC */
	VN_RING_INDIRECT_NEXT = 6,      /* INDIRECT together with NEXT (packed: or in a chain) */
	VN_RING_INDIRECT_LEN = 7,       /* table length 0, not a multiple of 16, or too long */
	VN_RING_INDIRECT_NESTED = 8,    /* INDIRECT inside an indirect table */
	VN_RING_INDIRECT_ADDR = 9,      /* table not inside one region of guest memory */
	VN_RING_ERR_MAX_ = 10
};

/* Per-queue scratch space (chain iovecs, bounce buffers); opaque to Python. */
struct vn_work;
/* Packed ring state (vn_vpacked.c); opaque to Python. */
struct vn_packed;

/*
 * One virtqueue.  Allocate with vn_vring_new().  Fields other than
 * kick_fd and call_fd are written by the C code only; Python reads them.
 *
 * For a packed ring (packed = 1) the index fields count descriptor chains,
 * not ring slots: last_avail_idx chains consumed, avail_idx_shadow chains
 * seen available, last_used_idx chains returned; desc, avail and used are
 * NULL and the ring lives in pk (vn_vpacked.c).
 */
struct vn_vring {
	uint32_t num;                   /* Queue Size; 0 until set up */
	uint32_t ready;                 /* 1 once vn_vring_setup() succeeded */
	struct vn_vring_desc *desc;     /* host pointers into guest memory */
	struct vn_vring_avail *avail;
	struct vn_vring_used *used;
	uint64_t desc_uaddr;            /* as given by SET_VRING_ADDR, for re-translation */
	uint64_t avail_uaddr;
	uint64_t used_uaddr;
	uint64_t features;              /* negotiated feature bits */
	uint16_t last_avail_idx;        /* next avail entry to consume (GET_VRING_BASE) */
	uint16_t last_used_idx;         /* our copy of used->idx */
	uint16_t avail_idx_shadow;      /* avail->idx as last read */
	uint16_t signalled_used;        /* used idx when we last considered notifying */
	uint8_t signalled_valid;        /* signalled_used holds a value */
	uint8_t event_idx;              /* VIRTIO_RING_F_EVENT_IDX negotiated */
	uint8_t indirect;               /* VIRTIO_RING_F_INDIRECT_DESC negotiated */
	uint8_t kick_enabled;           /* we asked the guest to kick us */
	int kick_fd;                    /* guest -> us (eventfd), used by Python only */
	int call_fd;                    /* us -> guest (eventfd), -1 for none */
	int broken;                     /* enum vn_ring_err; nonzero stops the queue */
	struct vn_work *work;
	uint32_t packed;                /* VIRTIO_F_RING_PACKED: a packed ring */
	struct vn_packed *pk;           /* its state, allocated at its first setup */
};

struct vn_vring *vn_vring_new(void);
void vn_vring_free(struct vn_vring *vq);
int vn_vring_setup(struct vn_vring *vq, const struct vn_mem *mem, uint32_t num,
		   uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr,
		   uint16_t base, uint64_t features);
int vn_vring_translate(struct vn_vring *vq, const struct vn_mem *mem);
uint16_t vn_vring_reset(struct vn_vring *vq);
int vn_vring_notify_enable(struct vn_vring *vq);
void vn_vring_notify_disable(struct vn_vring *vq);
int vn_vring_avail_count(struct vn_vring *vq);
/* VN_CDEF_END */

/* The split ring as laid out in guest memory (little-endian). */
struct vn_vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vn_vring_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];                /* then le16 used_event */
};

struct vn_vring_used_elem {
	uint32_t id;
	uint32_t len;
};

struct vn_vring_used {
	uint16_t flags;
	uint16_t idx;
	struct vn_vring_used_elem ring[];       /* then le16 avail_event */
};

/* Why a walked chain cannot be used as a packet (the ring itself is fine). */
enum vn_walk_fault {
	VN_WALK_OK = 0,
	VN_WALK_DESC_ADDR = 1,          /* a buffer outside guest memory */
	VN_WALK_DIRECTION = 2,          /* writable buffer in TX, read-only one in RX */
	VN_WALK_TOO_MANY_IOV = 3,       /* more pieces than the iovecs given */
	VN_WALK_TOO_LONG = 4            /* more bytes than the caller's limit */
};

/* Result of walking one descriptor chain. */
struct vn_chain {
	uint16_t head;          /* its head index, for the used ring */
	uint16_t fault;         /* enum vn_walk_fault: the first problem seen */
	uint32_t niov;          /* iovecs written */
	uint64_t len;           /* bytes the chain's descriptors describe */
};

int vn_vring_avail_head(struct vn_vring *vq, uint16_t idx, uint16_t *head);
int vn_chain_walk(struct vn_vring *vq, const struct vn_mem *mem, uint16_t head,
		  int want_write, struct iovec *iov, uint32_t max_iov, uint64_t max_len,
		  struct vn_chain *c);
void vn_vring_push(struct vn_vring *vq, uint16_t head, uint32_t len);
void vn_vring_publish(struct vn_vring *vq);
int vn_vring_signal(struct vn_vring *vq);
void vn_vring_break(struct vn_vring *vq, int reason);

/* Shared with the packed ring code (vn_vpacked.c). */
void vn_chain_add(const struct vn_mem *mem, const struct vn_vring_desc *d, int want_write,
		  struct iovec *iov, uint32_t max_iov, uint64_t max_len, struct vn_chain *c);
const void *vn_indirect_table(struct vn_vring *vq, const struct vn_mem *mem,
			      const struct vn_vring_desc *d, int in_indirect);

/* The per-queue work area, defined by the TX/RX paths (vn_netq.c). */
struct vn_work *vn_work_alloc(void);
void vn_work_free(struct vn_work *w);
void vn_work_reset(struct vn_work *w);

#endif
