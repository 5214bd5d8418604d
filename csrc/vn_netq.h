/*
 * vn_netq.h - virtio-net queues: TX drain to a tap, RX fill from a tap, per-queue stats.
 */
#ifndef VN_NETQ_H
#define VN_NETQ_H

#include <stddef.h>
#include <stdint.h>

#include "vn_mem.h"
#include "vn_offload.h"
#include "vn_pktring.h"
#include "vn_vring.h"

/* VN_CDEF_BEGIN */
/* Offloads a tap may be handed on write: the values of Linux's TUN_F_*. */
#define VN_TUN_F_CSUM 0x01
#define VN_TUN_F_TSO4 0x02
#define VN_TUN_F_TSO6 0x04
#define VN_TUN_F_TSO_ECN 0x08
#define VN_TUN_F_UFO 0x10
#define VN_TUN_F_USO4 0x20
#define VN_TUN_F_USO6 0x40

/* Largest virtio_net_hdr: 20 bytes with HASH_REPORT (virtio 1.3, 5.1.6). */
#define VN_NET_HDR_MAX 20
/*
 * Bytes of a TX frame copied out of guest memory to validate its protocol
 * headers: Ethernet, two VLAN tags, IPv4 with options or IPv6 with a few
 * extension headers, TCP with options (14 + 8 + 60 + 60 = 142) fit with room.
 */
#define VN_HDR_PEEK 256
/*
 * Most segments one software-segmented TX packet may become: a 64 KiB TSO at
 * Linux's smallest MSS (TCP_MIN_SND_MSS, 48) makes 1366.  More is dropped
 * (VN_BAD_NO_SPACE).
 */
#define VN_TX_MAX_SEGS 2048
/*
 * Header bytes reserved per software segment, on average over a packet's
 * segments (the arena is shared): as many as VN_HDR_PEEK validates.
 */
#define VN_TX_SEG_HDR 256

/* Size of the ring error array in vn_stats (enum vn_ring_err, with room). */
#define VN_STATS_RING_ERRS 16

/*
 * Why a packet (or an RX buffer) was dropped: an index into vn_stats.drops.
 * 1 .. VN_BAD_MAX_-1 are the offload engine's enum vn_bad (header refused);
 * the data path's own reasons start at VN_DROP_BASE.
 */
enum vn_drop {
	VN_DROP_BASE = 32,
	VN_DROP_HDR_SHORT = 32,         /* TX chain shorter than the virtio_net_hdr */
	VN_DROP_TOO_LONG = 33,          /* TX chain longer than the header + VN_MAX_FRAME */
	VN_DROP_DESC_ADDR = 34,         /* a buffer outside guest memory */
	VN_DROP_DIRECTION = 35,         /* TX: device-writable buffer; RX: read-only buffer */
	VN_DROP_TOO_MANY_IOV = 36,      /* more pieces than VN_CHAIN_MAX_IOV */
	VN_DROP_TAP_WRITE = 37,         /* the tap refused the write (not EAGAIN) */
	VN_DROP_TX_PARTIAL = 38,        /* EAGAIN after some segments of a packet went out */
	VN_DROP_RX_TRUNCATED = 39,      /* RX packet larger than the guest's buffers */
	VN_DROP_RX_NO_BUFFERS = 40,     /* RX packet discarded: the guest posted no buffers */
	VN_DROP_RX_BUF_SHORT = 41,      /* RX buffer smaller than the virtio_net_hdr */
	VN_DROP_LOCKED_SRC = 42,        /* TX, locked lladdr: Ethernet source is not the guest's */
	VN_DROP_LOCKED_ARP = 43,        /* TX, locked lladdr: ARP sender is not the guest's */
	VN_DROP_LOCKED_DST = 44,        /* RX, locked lladdr: unicast to another address */
	VN_DROP_INTERCEPT_FULL = 45,    /* TX: frame to answer here, intercept ring full */
	VN_DROP_INTERCEPT_LONG = 46,    /* TX: frame to answer here, longer than a ring slot */
	VN_DROP_MAX_ = 47
};

struct vn_rsc;

/* What the TX path may hand the tap. */
struct vn_txcfg {
	uint32_t hdr_sz;                /* the guest's virtio_net_hdr size: 10, 12 or 20 */
	uint32_t tap_has_vnet_hdr;      /* IFF_VNET_HDR with vnet_hdr_sz == hdr_sz */
	uint32_t tap_offloads;          /* VN_TUN_F_* the tap may be given; the rest in software */
	uint32_t discard;               /* count, then drop instead of writing (benchmarks) */
	uint32_t locked;                /* drop frames whose source (or ARP sender) is not lladdr */
	uint8_t lladdr[6];              /* the guest's MAC address */
	uint8_t pad_[2];
	uint32_t intercept_dhcp;        /* IPv4/UDP to port 67 goes to intercept, not the tap */
	struct vn_pktring *intercept;   /* frames vionet answers itself (needs intercept_dhcp) */
};

/* How the RX path fills guest buffers. */
struct vn_rxcfg {
	uint32_t hdr_sz;                /* the guest's virtio_net_hdr size: 10, 12 or 20 */
	uint32_t tap_has_vnet_hdr;      /* IFF_VNET_HDR with vnet_hdr_sz == hdr_sz */
	uint32_t mrg_rxbuf;             /* VIRTIO_NET_F_MRG_RXBUF negotiated */
	uint32_t guest_csum;            /* VIRTIO_NET_F_GUEST_CSUM: DATA_VALID may be set */
	uint32_t max_pkt;               /* largest read (header included); 0: hdr_sz + VN_MAX_FRAME */
	uint32_t pad_;
	struct vn_rsc *rsc;             /* coalesce received TCP (needs mrg_rxbuf); NULL: off */
	uint32_t locked;                /* drop unicast frames not addressed to lladdr */
	uint8_t lladdr[6];              /* the guest's MAC address */
	uint8_t pad2_[2];
	struct vn_pktring *inject;      /* frames delivered before the tap's; NULL: none */
};

/* Per-queue counters; one writer (the queue's thread). */
struct vn_stats {
	uint64_t chains;                /* descriptor chains returned to the used ring */
	uint64_t packets;               /* TX: packets written (a GSO one counts once); RX: delivered */
	uint64_t bytes;                 /* frame bytes, virtio_net_hdr excluded */
	uint64_t csum_passthrough;      /* TX: NEEDS_CSUM handed to the tap */
	uint64_t tso_passthrough;       /* TX: TCP GSO handed to the tap */
	uint64_t uso_passthrough;       /* TX: UDP_L4 GSO handed to the tap */
	uint64_t ufo_passthrough;       /* TX: UFO handed to the tap */
	uint64_t sw_segmented;          /* TX: GSO packets segmented here */
	uint64_t sw_segments;           /* TX: segments those produced */
	uint64_t csum_completed;        /* TX: checksums completed here */
	uint64_t hdr_flags_cleared;     /* TX: DATA_VALID/RSC_INFO a driver must not set, cleared */
	uint64_t discarded;             /* TX: writes skipped by the discard setting (per segment) */
	uint64_t tap_eagain;            /* tap said EAGAIN: batch ended, chain kept */
	uint64_t tap_errors;            /* tap read/write errors other than EAGAIN */
	uint64_t notifications;         /* guest notified (call eventfd) */
	uint64_t notify_suppressed;     /* guest asked not to be notified */
	uint64_t rx_buffers;            /* RX: guest buffers (chains) filled */
	uint64_t rx_parked;             /* RX: packets held until the guest posts buffers */
	uint64_t rx_data_valid;         /* RX: DATA_VALID set after checking the checksums */
	uint64_t intercepted;           /* TX: frames put in the intercept ring (DHCP) */
	uint64_t injected;              /* RX: frames delivered from the inject ring */
	uint64_t ring_errors[VN_STATS_RING_ERRS];       /* enum vn_ring_err */
	uint64_t drops[VN_DROP_MAX_];                   /* enum vn_drop / enum vn_bad */
};

int vn_tx_drain(struct vn_vring *vq, const struct vn_mem *mem, int tap_fd,
		const struct vn_txcfg *cfg, struct vn_stats *st, uint32_t budget);
int vn_rx_fill(struct vn_vring *vq, const struct vn_mem *mem, int tap_fd,
	       const struct vn_rxcfg *cfg, struct vn_stats *st, uint32_t budget);
int vn_rx_discard(struct vn_vring *vq, int tap_fd, struct vn_stats *st, uint32_t budget);
uint32_t vn_rx_parked_len(const struct vn_vring *vq);
int vn_rx_rsc_flush(struct vn_vring *vq, const struct vn_mem *mem, const struct vn_rxcfg *cfg,
		    struct vn_stats *st, int expired_only);
/* VN_CDEF_END */

#endif
