/*
 * vn_rsc.h - receive segment coalescing (RSC) of TCP segments for the guest.
 */
#ifndef VN_RSC_H
#define VN_RSC_H

#include <stddef.h>
#include <stdint.h>

#include "vn_offload.h"

/* VN_CDEF_BEGIN */
/* Flows (held coalesced units) at once: Linux GRO holds 8 per bucket x 8
 * buckets = 64 per NAPI context; the same bound keeps the table a few cache
 * lines of metadata and (64 + 1) * ~64 KiB of buffers. */
#define VN_RSC_MAX_FLOWS 64
/* Outputs one push can produce: the flow's held unit, then the segment. */
#define VN_RSC_PUSH_MAX_OUT 2
/* QEMU's default rsc_interval (300 us), the value its WHQL notes recommend. */
#define VN_RSC_DEFAULT_INTERVAL_NS 300000
/* Largest coalesced IP packet (IP header to end of payload): the 16-bit IPv4
 * total length; GRO's legacy limit (it refuses p->len + len >= 64 KiB). */
#define VN_RSC_MAX_BYTES 65535
/* Smallest max_bytes accepted: an IPv6 header plus a TCP header with every
 * option, so that any single candidate segment could be held. */
#define VN_RSC_MIN_BYTES 100

#define VN_RSC_MODE_GSO 0   /* Linux guest (GUEST_TSO4/6): GRO-style GSO packets */
#define VN_RSC_MODE_RSC 1   /* RSC guest (GUEST_RSC4/6 + RSC_EXT): RSC_INFO packets */

/* What an output is. */
#define VN_RSC_OUT_BYPASS 0   /* the input frame untouched, with the input header */
#define VN_RSC_OUT_SEGMENT 1  /* a verified segment delivered alone, as received */
#define VN_RSC_OUT_UNIT 2     /* a coalesced unit from the coalescer's buffer */

struct vn_rsc_cfg {
	uint64_t interval_ns;   /* how long a unit may be held (>= 1) */
	uint32_t max_bytes;     /* VN_RSC_MIN_BYTES..VN_RSC_MAX_BYTES */
	uint32_t max_flows;     /* 1..VN_RSC_MAX_FLOWS; 0 means VN_RSC_MAX_FLOWS */
	uint8_t mode;           /* VN_RSC_MODE_* */
	uint8_t data_valid;     /* mark verified single segments DATA_VALID */
	uint8_t ipv4;           /* coalesce TCP over IPv4 */
	uint8_t ipv6;           /* coalesce TCP over IPv6 */
	uint8_t pad_[4];
};

/* One packet to deliver to the guest. */
struct vn_rsc_out {
	struct vn_net_hdr hdr;  /* the virtio_net_hdr to write before it */
	const uint8_t *data;    /* Ethernet frame; see vn_rsc_push() for lifetime */
	uint32_t len;
	uint16_t segs;          /* TCP segments it carries (0 for a bypassed frame) */
	uint8_t kind;           /* VN_RSC_OUT_* */
	uint8_t pad_;
};

/* Counters, in the spirit of QEMU's VirtioNetRscStat. */
struct vn_rsc_stats {
	uint64_t received;          /* frames pushed */
	uint64_t coalesced;         /* segments appended to a unit after its first */
	uint64_t units;             /* units delivered (held segments, 1 or more) */
	uint64_t units_coalesced;   /* of those, units of 2 or more segments */
	uint64_t delivered;         /* packets handed out, of every kind */
	uint64_t bypass_not_ip;
	uint64_t bypass_ip_version; /* EtherType and IP version nibble disagree */
	uint64_t bypass_ip_options; /* IPv4 header longer than 20 bytes */
	uint64_t bypass_ipv6_ext;   /* IPv6 extension headers before TCP */
	uint64_t bypass_fragment;
	uint64_t bypass_not_tcp;
	uint64_t bypass_disabled;   /* TCP over an IP version not being coalesced */
	uint64_t bypass_bad_csum;   /* IPv4 header or TCP checksum wrong */
	uint64_t bypass_too_small;  /* truncated or inconsistent lengths */
	uint64_t bypass_too_large;  /* longer than a frame, or than max_bytes alone */
	uint64_t bypass_syn;
	uint64_t bypass_offloaded;  /* the input header already says GSO or NEEDS_CSUM */
	uint64_t final_fin;         /* these deliver the flow's unit, then the segment */
	uint64_t final_rst;
	uint64_t final_urg;
	uint64_t final_cwr;
	uint64_t final_ece;
	uint64_t final_psh;         /* PSH closes the unit it joins (or goes alone) */
	uint64_t final_padded;      /* Ethernet padding after the IP packet */
	uint64_t pure_acks;         /* no payload, ACK moved or no unit held */
	uint64_t dup_acks;          /* no payload, same ACK and window as the unit */
	uint64_t window_updates;    /* same ACK, other window */
	uint64_t ack_changed;       /* gso mode: data whose ACK differs from the unit's */
	uint64_t out_of_order;      /* sequence is not the unit's next */
	uint64_t out_of_window;     /* sequence or ACK too far from the unit's */
	uint64_t header_mismatch;   /* L2, TOS/TC, TTL/hop limit, DF, IP ID, flags */
	uint64_t options_mismatch;  /* TCP options differ (e.g. a new timestamp) */
	uint64_t mss_exceeded;      /* payload longer than the unit's first segment */
	uint64_t over_size;         /* would grow the unit past max_bytes */
	uint64_t timer_flushes;     /* units delivered because their time was up */
	uint64_t drained;           /* units delivered by vn_rsc_flush() */
	uint64_t evictions;         /* units delivered to make room for a new flow */
};

/* One frame of a batch. */
struct vn_rsc_batch_in {
	const uint8_t *frame;
	uint32_t len;
	uint8_t has_hdr;        /* hdr is the frame's virtio_net_hdr from the tap */
	uint8_t pad_[3];
	struct vn_net_hdr hdr;
	uint64_t now_ns;
};

struct vn_rsc;

int vn_rsc_new(const struct vn_rsc_cfg *cfg, struct vn_rsc **out);
void vn_rsc_free(struct vn_rsc *r);
int vn_rsc_push(struct vn_rsc *r, const struct vn_net_hdr *in_hdr, const uint8_t *frame,
		size_t len, uint64_t now_ns, struct vn_rsc_out *out, uint32_t max_out);
int vn_rsc_poll(struct vn_rsc *r, uint64_t now_ns, struct vn_rsc_out *out, uint32_t max_out);
int vn_rsc_flush(struct vn_rsc *r, struct vn_rsc_out *out, uint32_t max_out);
int vn_rsc_deadline(const struct vn_rsc *r, uint64_t *deadline_ns);
uint32_t vn_rsc_held(const struct vn_rsc *r);
void vn_rsc_get_stats(const struct vn_rsc *r, struct vn_rsc_stats *st);
int vn_rsc_push_batch(struct vn_rsc *r, const struct vn_rsc_batch_in *in, uint32_t n,
		      struct vn_rsc_out *out, uint32_t max_out, uint8_t *arena,
		      size_t arena_cap, uint32_t *consumed);
/* VN_CDEF_END */

#endif
