/*
 * vn_offload.h - virtio_net_hdr validation, checksum completion, software GSO.
 */
#ifndef VN_OFFLOAD_H
#define VN_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vn_pkt.h"

/* VN_CDEF_BEGIN */
#define VN_HDR_F_NEEDS_CSUM 1
#define VN_HDR_F_DATA_VALID 2
#define VN_HDR_F_RSC_INFO 4

#define VN_GSO_NONE 0
#define VN_GSO_TCPV4 1
#define VN_GSO_UDP 3
#define VN_GSO_TCPV6 4
#define VN_GSO_UDP_L4 5
#define VN_GSO_ECN 0x80

/* Linux's UDP_MAX_SEGMENTS: the most segments a USO write may carry. */
#define VN_USO_MAX_SEGS 128
/* Linux's GSO_BY_FRAGS: a gso_size the kernel reserves and refuses from users. */
#define VN_GSO_BY_FRAGS 0xffff

/* The virtio_net_hdr fields, host byte order (the wire is little-endian). */
struct vn_net_hdr {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len;
	uint16_t gso_size;
	uint16_t csum_start;
	uint16_t csum_offset;
	uint16_t num_buffers;
};

/* Why a header/frame pair was refused.  Functions return -reason. */
enum vn_bad {
	VN_BAD_NONE = 0,
	VN_BAD_FRAME_SHORT = 1,   /* shorter than an Ethernet header */
	VN_BAD_FRAME_LONG = 2,    /* longer than VN_MAX_FRAME */
	VN_BAD_HDR_LEN = 3,       /* hdr_len beyond the frame, or 1..13 */
	VN_BAD_GSO_TYPE = 4,      /* unknown gso_type, or ECN on a UDP type */
	VN_BAD_GSO_SIZE = 5,      /* gso_size 0 or GSO_BY_FRAGS */
	VN_BAD_GSO_NO_CSUM = 6,   /* GSO without NEEDS_CSUM */
	VN_BAD_CSUM_START = 7,    /* csum_start outside the frame or in the L2/L3 headers */
	VN_BAD_CSUM_OFFSET = 8,   /* checksum field outside the frame or not the L4 one */
	VN_BAD_L3 = 9,            /* GSO on a frame that is not the IP version it names */
	VN_BAD_L4 = 10,           /* GSO on a frame whose L4 is not the protocol it names */
	VN_BAD_USO_SEGS = 11,     /* USO with more than VN_USO_MAX_SEGS segments */
	VN_BAD_NO_SPACE = 12,     /* the caller's output arena or segment table is too small */
	VN_BAD_MAX_ = 13
};

int vn_validate(const struct vn_net_hdr *h, const uint8_t *frame, size_t len,
		struct vn_pkt *pkt);
int vn_validate_head(const struct vn_net_hdr *h, const uint8_t *head, size_t head_len,
		     size_t len, struct vn_pkt *pkt);
int vn_complete_csum(const struct vn_net_hdr *h, uint8_t *frame, size_t len);
int vn_segment(const struct vn_net_hdr *h, const uint8_t *frame, size_t len,
	       uint32_t v6_frag_id, uint8_t *out, size_t out_cap,
	       uint32_t *seg_lens, uint32_t max_segs);
int vn_segment_iov(const struct vn_net_hdr *h, const uint8_t *frame, size_t len,
		   uint32_t v6_frag_id, uint8_t *hdr_arena, size_t arena_cap,
		   struct iovec *iov, uint32_t max_segs);
int vn_verify(const uint8_t *frame, size_t len);

/* One frame of a batch: input, and where its output went. */
struct vn_batch_ent {
	struct vn_net_hdr hdr;
	const uint8_t *frame;
	uint32_t len;
	int32_t result;         /* segments written, or -reason */
	uint32_t first_seg;     /* index of its first entry in seg_lens */
};

int vn_fix_batch(struct vn_batch_ent *ents, uint32_t n, uint32_t v6_frag_id,
		 uint8_t *out, size_t out_cap, uint32_t *seg_lens, uint32_t max_segs);
/* VN_CDEF_END */

int vn_gso_needed(const struct vn_net_hdr *h, const struct vn_pkt *pkt, size_t len);

#endif
