/*
 * vn_netq.c - virtio-net queues: TX drain to a tap, RX fill from a tap.
 *
 * Theory of operation
 *
 * One call handles a batch on one queue: the Python loop calls it when the
 * guest kicks (TX, or RX buffers posted) or the tap is readable (RX), with a
 * budget.  Nothing is allocated per packet: every buffer lives in the
 * queue's work area, allocated with the queue.  A queue is used by one
 * thread at a time; the memory table is shared read-only.
 *
 * TX (guest -> tap), per chain:
 *   1. Walk the chain into iovecs (device-readable only, at most the header
 *      plus VN_MAX_FRAME bytes).  iov[0] is kept free for a header.
 *   2. Copy the virtio_net_hdr (it may span descriptors) into a local and
 *      the frame's first VN_HDR_PEEK bytes into a scratch; validate the pair
 *      with vn_validate_head().  The header we act on and write is our copy,
 *      so the guest cannot change it after the check.  DATA_VALID and
 *      RSC_INFO, which a driver must not set on TX (5.1.6.2.1), are cleared
 *      so that a guest cannot vouch for checksums to the host stack.
 *   3. If the tap can take the packet as it is (no offload, or the offload
 *      is in cfg->tap_offloads and the tap has a vnet header): writev() our
 *      header plus the frame straight from guest memory.  The kernel
 *      validates the frame again as it parses it, so a guest changing its
 *      frame under us only hurts its own packet.
 *   4. Otherwise copy the frame into the work area (a stable copy),
 *      validate it again, and let vn_segment_iov() complete the checksum or
 *      segment it; each packet is one writev() of [zero vnet header if the
 *      tap has one] + segment header + payload.
 *   5. Return the chain to the used ring (len 0: TX buffers are not written).
 * EAGAIN from the tap ends the batch and keeps the chain for the next call
 * (unless some segments of it already went out: the rest is dropped).
 *
 * RX (tap -> guest): guest buffers are gathered into a window of peeked
 * chains (device-writable only, each at least a virtio_net_hdr long).  With
 * MRG_RXBUF the window grows until it can hold cfg->max_pkt, without it is
 * one chain.  When the window holds max_pkt and the tap has a vnet header,
 * the tap reads straight into guest memory (readv); otherwise the packet is
 * read into the work area's bounce buffer and copied out.  A tap read
 * returns at most what it was given, so every read gets one byte more than
 * may be used (an overflow sink after the guest buffers, one spare byte in
 * the bounce buffer): a byte landing there means the packet did not fit.
 * Only the chains
 * the packet needed are consumed; the used length of each is what it holds,
 * num_buffers is written into the header, and the unconsumed rest of the
 * window is simply not consumed (last_avail_idx only moves on use).
 * A packet bigger than what the guest has posted is parked in the bounce
 * buffer (MRG_RXBUF) until more buffers come, or dropped when it can never
 * fit (one chain, or the iovec limit).  Without buffers no read happens and
 * the call returns -ENOBUFS, so the caller waits for a kick (and may drop
 * with vn_rx_discard() if none comes).  A tap with no vnet header gets a zero
 * header written for it, with DATA_VALID when vn_verify() approves the
 * checksums and the guest negotiated GUEST_CSUM.
 *
 * Locked lladdr (cfg->locked): TX refuses a frame whose Ethernet source, or
 * (for ARP, also behind up to two VLAN tags) whose sender hardware address,
 * is not cfg->lladdr; RX refuses unicast frames (I/G bit clear) addressed to
 * another MAC.  Both look only at bytes already copied (the TX peek, the RX
 * bounce buffer), so the guest cannot change what was checked: TX writes
 * the checked bytes from the peek copy (tx_locked_iov), the rest from guest
 * memory or the stable copy as usual.  A locked RX
 * queue never reads the tap straight into guest memory: a frame refused
 * there would already be in the guest's buffers for it to read.
 *
 * Frames vionet answers itself (DHCP on a local interface): with
 * cfg->intercept_dhcp, TX copies an untagged IPv4/UDP frame to port 67 into
 * the intercept ring (vn_pktring.c) instead of the tap; the answers come
 * back through the RX inject ring, which vn_rx_fill() delivers before
 * reading the tap, with a zero header (DATA_VALID when vn_verify() approves
 * and the guest has GUEST_CSUM).
 *
 * Bad chains (fault from the walk, RX buffer shorter than the header) are
 * returned with length 0 and counted; a broken ring stops the call with
 * -EIO, after making visible what was already completed.  Used elements are
 * published once per batch (TX: also every TX_PUBLISH_EVERY chains within
 * it), then the guest is notified per EVENT_IDX rules.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "vn_netq.h"
#include "vn_rsc.h"

_Static_assert((int)VN_BAD_MAX_ <= (int)VN_DROP_BASE, "offload reasons overlap data path reasons");
_Static_assert((int)VN_RING_ERR_MAX_ <= VN_STATS_RING_ERRS, "vn_stats.ring_errors too small");

/* Offset of num_buffers in the 12- and 20-byte virtio_net_hdr. */
#define HDR_NUM_BUFFERS_OFF 10
/* The 10-byte header's fields; num_buffers follows from 12 bytes on. */
#define HDR_LEGACY_SZ 10
#define HDR_MRG_SZ 12
/*
 * Bounce buffer: a header and a maximal frame (RX), or a frame (TX), plus one
 * byte: a tap read returns at most the buffer's size, never the size of a
 * packet cut short, so only a byte landing past the limit shows an overrun.
 */
#define WORK_BUF_CAP (VN_NET_HDR_MAX + VN_MAX_FRAME + 1)
/* RX window iovecs: readv() takes VN_CHAIN_MAX_IOV, one is the overflow sink. */
#define RX_MAX_IOV (VN_CHAIN_MAX_IOV - 1)
#define SEG_ARENA_CAP ((size_t)VN_TX_MAX_SEGS * VN_TX_SEG_HDR)
/* A TX packet's writev: optional vnet header, segment header, payload. */
#define SEG_WRITE_IOV 3

/* Why RX stopped growing its window of guest buffers. */
enum win_stop {
	WIN_FULL,       /* holds what was wanted (or its one chain, without MRG_RXBUF) */
	WIN_EMPTY,      /* the guest has no more buffers available */
	WIN_LIMIT,      /* iovec/chain limit, or a bad chain behind good ones */
	WIN_BROKEN      /* the ring is broken */
};

struct vn_work {
	/* TX: iov[0] for a header, chain from iov[1]; RX: the window, then the sink. */
	struct iovec iov[VN_CHAIN_MAX_IOV + 1];
	struct iovec seg_iov[2 * VN_TX_MAX_SEGS];
	uint8_t hdr_raw[VN_NET_HDR_MAX];
	uint8_t zero_hdr[VN_NET_HDR_MAX];
	uint8_t peek[VN_HDR_PEEK];
	uint8_t sink[1];                        /* RX: catches the byte past the buffers */
	uint8_t buf[WORK_BUF_CAP];              /* TX linear frame / RX bounce buffer */
	uint8_t arena[SEG_ARENA_CAP];           /* TX segment headers */
	uint32_t v6_frag_id;                    /* next IPv6 fragment ID for software UFO */
	/* RX window: chains peeked from last_avail_idx on, not yet consumed. */
	uint32_t nchains;
	uint32_t niov;
	uint64_t cap;                           /* bytes all window chains hold */
	uint16_t head[VN_CHAIN_MAX_IOV];
	uint32_t chain_niov[VN_CHAIN_MAX_IOV];
	uint64_t chain_cap[VN_CHAIN_MAX_IOV];
	uint32_t parked_len;                    /* RX packet waiting in buf, 0 if none */
	/* RX with a coalescer: outputs of the last push not delivered yet.  They
	 * point into buf or the coalescer's unit buffer, both left alone until
	 * these are delivered (no read, no coalescer call before). */
	struct vn_rsc_out rsc_pending[VN_RSC_PUSH_MAX_OUT];
	uint32_t rsc_first, rsc_npending;
	uint32_t rsc_hdr_sz;                    /* header size they will be given */
};

/**
 * vn_work_alloc() - allocate a queue's work area (once per queue)
 *
 * Return: the work area, or NULL when out of memory
 */
struct vn_work *vn_work_alloc(void)
{
	struct vn_work *w = calloc(1, sizeof(*w));

	if (!w)
		return NULL;
	/* Any start value is correct; a random one is what the kernel uses. */
	if (getrandom(&w->v6_frag_id, sizeof(w->v6_frag_id), GRND_NONBLOCK) < 0)
		w->v6_frag_id = (uint32_t)(uintptr_t)w;
	return w;
}

/**
 * vn_work_free() - free a work area
 * @w: the work area, or NULL
 */
void vn_work_free(struct vn_work *w)
{
	free(w);
}

/**
 * vn_work_reset() - forget RX state (window, parked packet) on queue reset
 * @w: the work area, or NULL
 */
void vn_work_reset(struct vn_work *w)
{
	if (!w)
		return;
	w->nchains = 0;
	w->niov = 0;
	w->cap = 0;
	w->parked_len = 0;
	w->rsc_first = w->rsc_npending = 0;
}

static int hdr_sz_ok(uint32_t sz)
{
	return sz == HDR_LEGACY_SZ || sz == HDR_MRG_SZ || sz == VN_NET_HDR_MAX;
}

static void count_drop(struct vn_stats *st, unsigned int reason)
{
	if (reason < VN_DROP_MAX_)
		st->drops[reason]++;
}

static unsigned int walk_drop(unsigned int fault)
{
	switch (fault) {
	case VN_WALK_DESC_ADDR:
		return VN_DROP_DESC_ADDR;
	case VN_WALK_DIRECTION:
		return VN_DROP_DIRECTION;
	case VN_WALK_TOO_MANY_IOV:
		return VN_DROP_TOO_MANY_IOV;
	default:
		return VN_DROP_TOO_LONG;
	}
}

/* Chains the guest has made available beyond last_avail_idx, re-reading
 * avail->idx only when the last value read is used up. */
static int avail_left(struct vn_vring *vq)
{
	uint16_t n = (uint16_t)(vq->avail_idx_shadow - vq->last_avail_idx);

	if (n != 0 && n <= vq->num)
		return n;
	return vn_vring_avail_count(vq);
}

/* Publish the batch's used elements and notify the guest if it wants it. */
static void finish_batch(struct vn_vring *vq, struct vn_stats *st, uint16_t used_before)
{
	if (vq->last_used_idx == used_before)
		return;
	vn_vring_publish(vq);
	if (vn_vring_signal(vq))
		st->notifications++;
	else
		st->notify_suppressed++;
}

/* ---- TX ---- */

/*
 * Within one TX batch, make the used elements visible to the guest every
 * this many chains (no notification: that stays once per batch).  A guest
 * driver that polls (DPDK) refills the ring while a long batch still runs;
 * publishing only at the end left a 256-entry ring full for the whole of a
 * 256-chain batch, and the guest stalled until it ended.
 */
#define TX_PUBLISH_EVERY 32u

enum tx_result { TX_DONE, TX_AGAIN };

/* Ethertypes the lladdr lock and the DHCP intercept look at. */
#define ETH_P_IPV4 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88a8
/* VLAN tags the lock looks through: as many as VN_HDR_PEEK is sized for;
 * a frame with more is refused (it could hide an ARP sender). */
#define LOCK_VLAN_TAGS_MAX 2
#define VLAN_TAG_LEN 4
#define ETH_SRC_OFF 6
#define ETH_ALEN 6
#define ETH_TYPE_OFF 12
/* ARP (RFC 826) over Ethernet: htype 1, hlen 6; the sender hardware
 * address follows htype, ptype, hlen, plen and oper (8 bytes). */
#define ARP_HTYPE_ETHER 1
#define ARP_HLEN_OFF 4
#define ARP_SHA_OFF 8
/* The DHCP server port (RFC 2131, 4.1); IPv4 flags+offset: MF and offset. */
#define DHCP_SERVER_PORT 67
#define IPV4_PROTO_UDP 17
#define IPV4_FRAG_MASK 0x3fff

/* Locked lladdr: 0 when the frame's source and ARP sender are the guest's,
 * else the drop reason.  @p holds the frame's first @len bytes. */
static unsigned int tx_lock_check(const struct vn_txcfg *cfg, const uint8_t *p, size_t len)
{
	size_t off = VN_ETH_HLEN;
	uint16_t type;
	int tags = 0;

	if (len < VN_ETH_HLEN || memcmp(p + ETH_SRC_OFF, cfg->lladdr, ETH_ALEN) != 0)
		return VN_DROP_LOCKED_SRC;
	type = vn_get16(p + ETH_TYPE_OFF);
	while (type == ETH_P_8021Q || type == ETH_P_8021AD) {
		if (tags == LOCK_VLAN_TAGS_MAX || off + VLAN_TAG_LEN > len)
			return VN_DROP_LOCKED_ARP;
		type = vn_get16(p + off + 2);
		off += VLAN_TAG_LEN;
		tags++;
	}
	if (type != ETH_P_ARP)
		return 0;
	if (off + ARP_SHA_OFF + ETH_ALEN > len || vn_get16(p + off) != ARP_HTYPE_ETHER ||
	    p[off + ARP_HLEN_OFF] != ETH_ALEN ||
	    memcmp(p + off + ARP_SHA_OFF, cfg->lladdr, ETH_ALEN) != 0)
		return VN_DROP_LOCKED_ARP;
	return 0;
}

/* An untagged, unfragmented IPv4/UDP frame to the DHCP server port. */
static int tx_is_dhcp(const uint8_t *p, size_t len)
{
	const uint8_t *ip = p + VN_ETH_HLEN;
	size_t ihl;

	if (len < VN_ETH_HLEN + VN_IPV4_HLEN + VN_UDP_HLEN || vn_get16(p + ETH_TYPE_OFF) != ETH_P_IPV4)
		return 0;
	ihl = (size_t)(ip[0] & 0x0f) * 4;
	if ((ip[0] >> 4) != 4 || ihl < VN_IPV4_HLEN || VN_ETH_HLEN + ihl + VN_UDP_HLEN > len)
		return 0;
	if (ip[9] != IPV4_PROTO_UDP || (vn_get16(ip + 6) & IPV4_FRAG_MASK) != 0)
		return 0;
	return vn_get16(ip + ihl + 2) == DHCP_SERVER_PORT;
}

static void hdr_parse(const uint8_t *b, struct vn_net_hdr *h)
{
	uint16_t v[4];

	memcpy(v, b + 2, sizeof(v));
	h->flags = b[0];
	h->gso_type = b[1];
	h->hdr_len = le16toh(v[0]);
	h->gso_size = le16toh(v[1]);
	h->csum_start = le16toh(v[2]);
	h->csum_offset = le16toh(v[3]);
	h->num_buffers = 0;
}

/* Skip @skip bytes of iov[first..end) in place; return the first index left. */
static uint32_t iov_skip(struct iovec *iov, uint32_t first, uint32_t end, size_t skip)
{
	uint32_t i = first;

	while (i < end && skip >= iov[i].iov_len) {
		skip -= iov[i].iov_len;
		i++;
	}
	if (i < end && skip) {
		iov[i].iov_base = (uint8_t *)iov[i].iov_base + skip;
		iov[i].iov_len -= skip;
	}
	return i;
}

/* The VN_TUN_F_* a header asks of the tap. */
static uint32_t offloads_needed(const struct vn_net_hdr *h, const struct vn_pkt *pkt)
{
	uint32_t need = 0;

	if (h->flags & VN_HDR_F_NEEDS_CSUM)
		need |= VN_TUN_F_CSUM;
	switch (h->gso_type & ~VN_GSO_ECN) {
	case VN_GSO_TCPV4:
		need |= VN_TUN_F_TSO4;
		break;
	case VN_GSO_TCPV6:
		need |= VN_TUN_F_TSO6;
		break;
	case VN_GSO_UDP:
		need |= VN_TUN_F_UFO;
		break;
	case VN_GSO_UDP_L4:
		need |= pkt->ip_version == 6 ? VN_TUN_F_USO6 : VN_TUN_F_USO4;
		break;
	default:
		break;
	}
	if (h->gso_type & VN_GSO_ECN)
		need |= VN_TUN_F_TSO_ECN;
	return need;
}

/* Write one packet: 0 on success, TX_AGAIN, or -1 on a counted error. */
static int tap_write(int fd, const struct iovec *iov, uint32_t n,
		     const struct vn_txcfg *cfg, struct vn_stats *st)
{
	ssize_t rc;

	if (cfg->discard) {
		st->discarded++;
		return 0;
	}
	do {
		rc = writev(fd, iov, (int)n);
	} while (rc < 0 && errno == EINTR);
	if (rc >= 0)
		return 0;
	if (errno == EAGAIN || errno == EWOULDBLOCK)
		return TX_AGAIN;
	st->tap_errors++;
	return -1;
}

static void count_passthrough(const struct vn_net_hdr *h, struct vn_stats *st)
{
	if (h->flags & VN_HDR_F_NEEDS_CSUM)
		st->csum_passthrough++;
	switch (h->gso_type & ~VN_GSO_ECN) {
	case VN_GSO_TCPV4:
	case VN_GSO_TCPV6:
		st->tso_passthrough++;
		break;
	case VN_GSO_UDP:
		st->ufo_passthrough++;
		break;
	case VN_GSO_UDP_L4:
		st->uso_passthrough++;
		break;
	default:
		break;
	}
}

/* Where a TX chain's frame is: w->iov[first .. first + n). */
struct tx_frame {
	struct vn_net_hdr h;
	struct vn_pkt pkt;
	uint32_t first;
	uint32_t n;
	size_t len;
	size_t peek_len;        /* frame bytes copied to w->peek and checked there */
};

/*
 * Locked lladdr: the iovecs to write a frame whose first bytes come from the
 * peek copy the lock examined (the guest may rewrite its memory at any time),
 * the rest from guest memory.  Built in seg_iov, which only the software path
 * uses; w->iov is changed in place (a retried chain is walked again).
 * Return the count.
 */
static uint32_t tx_locked_iov(struct vn_work *w, const struct tx_frame *f,
			      const struct vn_txcfg *cfg)
{
	struct iovec *v = w->seg_iov;
	uint32_t end = f->first + f->n, i, k = 0;

	if (cfg->tap_has_vnet_hdr) {
		v[k].iov_base = w->hdr_raw;
		v[k++].iov_len = cfg->hdr_sz;
	}
	v[k].iov_base = w->peek;
	v[k++].iov_len = f->peek_len;
	for (i = iov_skip(w->iov, f->first, end, f->peek_len); i < end; i++)
		v[k++] = w->iov[i];
	return k;
}

/* The tap takes the frame as it is: our header copy, then guest memory. */
static int tx_passthrough(struct vn_work *w, const struct tx_frame *f, int tap_fd,
			  const struct vn_txcfg *cfg, struct vn_stats *st)
{
	const struct iovec *v = w->iov + f->first;
	uint32_t n = f->n;
	int rc;

	if (cfg->tap_has_vnet_hdr)
		memset(w->hdr_raw + HDR_LEGACY_SZ, 0, cfg->hdr_sz - HDR_LEGACY_SZ);
	if (cfg->locked) {
		n = tx_locked_iov(w, f, cfg);
		v = w->seg_iov;
	} else if (cfg->tap_has_vnet_hdr) {
		/* iov[first - 1] holds header bytes only (or is the spare iov[0]). */
		w->iov[f->first - 1].iov_base = w->hdr_raw;
		w->iov[f->first - 1].iov_len = cfg->hdr_sz;
		v--;
		n++;
	}
	rc = tap_write(tap_fd, v, n, cfg, st);
	if (rc == TX_AGAIN)
		return TX_AGAIN;
	if (rc < 0) {
		count_drop(st, VN_DROP_TAP_WRITE);
		return TX_DONE;
	}
	count_passthrough(&f->h, st);
	st->packets++;
	st->bytes += f->len;
	return TX_DONE;
}

/* Write the @nseg packets vn_segment_iov() described. */
static int tx_write_segments(struct vn_work *w, int nseg, int tap_fd,
			     const struct vn_txcfg *cfg, struct vn_stats *st)
{
	struct iovec v[SEG_WRITE_IOV];
	uint32_t k = 0;
	int i;

	if (cfg->tap_has_vnet_hdr) {
		v[k].iov_base = w->zero_hdr;
		v[k++].iov_len = cfg->hdr_sz;
	}
	for (i = 0; i < nseg; i++) {
		int rc;

		v[k] = w->seg_iov[2 * i];
		v[k + 1] = w->seg_iov[2 * i + 1];
		rc = tap_write(tap_fd, v, k + 2, cfg, st);
		if (rc == TX_AGAIN && i == 0)
			return TX_AGAIN;
		if (rc == TX_AGAIN || rc < 0) {
			count_drop(st, rc == TX_AGAIN ? VN_DROP_TX_PARTIAL : VN_DROP_TAP_WRITE);
			return -1;
		}
	}
	return TX_DONE;
}

/* Complete the checksum or segment in software, from a stable copy. */
static int tx_software(struct vn_work *w, struct tx_frame *f, int tap_fd,
		       const struct vn_txcfg *cfg, struct vn_stats *st)
{
	int nseg, rc, gso;

	vn_iov_to_buf(w->iov + f->first, f->n, 0, w->buf, f->len);
	if (cfg->locked)        /* the bytes the lock checked, not a later version */
		memcpy(w->buf, w->peek, f->peek_len);
	rc = vn_validate(&f->h, w->buf, f->len, &f->pkt);
	if (rc) {
		count_drop(st, (unsigned int)-rc);
		return TX_DONE;
	}
	gso = vn_gso_needed(&f->h, &f->pkt, f->len);
	nseg = vn_segment_iov(&f->h, w->buf, f->len, w->v6_frag_id, w->arena, SEG_ARENA_CAP,
			      w->seg_iov, VN_TX_MAX_SEGS);
	if (nseg < 0) {
		count_drop(st, (unsigned int)-nseg);
		return TX_DONE;
	}
	rc = tx_write_segments(w, nseg, tap_fd, cfg, st);
	if (rc == TX_AGAIN)
		return TX_AGAIN;
	if (rc < 0)
		return TX_DONE;
	w->v6_frag_id++;
	if (gso) {
		st->sw_segmented++;
		st->sw_segments += (uint64_t)nseg;
	}
	if (f->h.flags & VN_HDR_F_NEEDS_CSUM)
		st->csum_completed++;
	st->packets++;
	st->bytes += f->len;
	return TX_DONE;
}

/* Hand a frame to the intercept ring (a stable copy) instead of the tap. */
static void tx_intercept(struct vn_work *w, const struct tx_frame *f,
			 const struct vn_txcfg *cfg, struct vn_stats *st)
{
	uint8_t *slot;

	if (f->len > VN_PKTRING_SLOT_SZ) {
		count_drop(st, VN_DROP_INTERCEPT_LONG);
		return;
	}
	slot = vn_pktring_slot(cfg->intercept);
	if (!slot) {
		count_drop(st, VN_DROP_INTERCEPT_FULL);
		return;
	}
	vn_iov_to_buf(w->iov + f->first, f->n, 0, slot, f->len);
	vn_pktring_commit(cfg->intercept, f->len);
	st->intercepted++;
}

/* One walked chain: validate, then pass through or fix in software. */
static int tx_one(struct vn_work *w, const struct vn_chain *c, int tap_fd,
		  const struct vn_txcfg *cfg, struct vn_stats *st)
{
	struct tx_frame f;
	size_t peek_len;
	int rc;

	if (c->fault) {
		count_drop(st, walk_drop(c->fault));
		return TX_DONE;
	}
	if (c->len < cfg->hdr_sz) {
		count_drop(st, VN_DROP_HDR_SHORT);
		return TX_DONE;
	}
	f.len = (size_t)c->len - cfg->hdr_sz;
	vn_iov_to_buf(w->iov + 1, c->niov, 0, w->hdr_raw, cfg->hdr_sz);
	hdr_parse(w->hdr_raw, &f.h);
	f.first = iov_skip(w->iov, 1, c->niov + 1, cfg->hdr_sz);
	f.n = c->niov + 1 - f.first;
	peek_len = f.len < VN_HDR_PEEK ? f.len : VN_HDR_PEEK;
	f.peek_len = peek_len;
	vn_iov_to_buf(w->iov + f.first, f.n, 0, w->peek, peek_len);
	rc = vn_validate_head(&f.h, w->peek, peek_len, f.len, &f.pkt);
	if (rc) {
		count_drop(st, (unsigned int)-rc);
		return TX_DONE;
	}
	if (f.h.flags & ~VN_HDR_F_NEEDS_CSUM) {
		f.h.flags &= VN_HDR_F_NEEDS_CSUM;
		w->hdr_raw[0] = f.h.flags;
		st->hdr_flags_cleared++;
	}
	if (cfg->locked) {
		unsigned int why = tx_lock_check(cfg, w->peek, peek_len);

		if (why) {
			count_drop(st, why);
			return TX_DONE;
		}
	}
	if (cfg->intercept_dhcp && cfg->intercept && f.h.gso_type == VN_GSO_NONE &&
	    tx_is_dhcp(w->peek, peek_len)) {
		tx_intercept(w, &f, cfg, st);
		return TX_DONE;
	}
	{
		uint32_t need = offloads_needed(&f.h, &f.pkt);

		if (need == 0 || (cfg->tap_has_vnet_hdr && (cfg->tap_offloads & need) == need))
			return tx_passthrough(w, &f, tap_fd, cfg, st);
	}
	return tx_software(w, &f, tap_fd, cfg, st);
}

static int check_queue(const struct vn_vring *vq, const struct vn_mem *mem,
		       const void *cfg, const struct vn_stats *st)
{
	if (!vq || !mem || !cfg || !st || !vq->ready)
		return -EINVAL;
	if (vq->broken)
		return -EIO;
	return 0;
}

/**
 * vn_tx_drain() - send up to @budget chains from a TX queue to the tap
 * @vq: the TX queue
 * @mem: the memory table
 * @tap_fd: the tap (non-blocking)
 * @cfg: header size, what the tap may be handed
 * @st: the queue's counters
 * @budget: most chains to consume
 *
 * Return: chains consumed (sent or dropped), -EIO when the ring is (or
 * became) broken, -EINVAL for a bad argument or a queue not set up
 */
int vn_tx_drain(struct vn_vring *vq, const struct vn_mem *mem, int tap_fd,
		const struct vn_txcfg *cfg, struct vn_stats *st, uint32_t budget)
{
	int rc = check_queue(vq, mem, cfg, st);
	uint16_t used_before;
	uint32_t done = 0;

	if (rc)
		return rc;
	if (!hdr_sz_ok(cfg->hdr_sz))
		return -EINVAL;
	used_before = vq->last_used_idx;
	while (done < budget) {
		struct vn_chain c;
		uint16_t head;

		if (avail_left(vq) <= 0 || vn_vring_avail_head(vq, vq->last_avail_idx, &head))
			break;
		/* iov[0] stays free; one more stays free for tx_passthrough()'s header. */
		if (vn_chain_walk(vq, mem, head, 0, vq->work->iov + 1, VN_CHAIN_MAX_IOV - 1,
				  (uint64_t)cfg->hdr_sz + VN_MAX_FRAME, &c))
			break;
		if (tx_one(vq->work, &c, tap_fd, cfg, st) == TX_AGAIN) {
			st->tap_eagain++;
			break;
		}
		vn_vring_push(vq, head, 0);
		vq->last_avail_idx++;
		st->chains++;
		done++;
		if (done % TX_PUBLISH_EVERY == 0)
			vn_vring_publish(vq);
	}
	finish_batch(vq, st, used_before);
	if (vq->broken) {
		st->ring_errors[vq->broken]++;
		return -EIO;
	}
	return (int)done;
}

/* ---- RX ---- */

/* Return the chain at the front of an empty window as unusable. */
static void rx_reject(struct vn_vring *vq, struct vn_stats *st, uint16_t head,
		      unsigned int reason)
{
	count_drop(st, reason);
	vn_vring_push(vq, head, 0);
	vq->last_avail_idx++;
	st->chains++;
}

/* Grow the window of guest buffers until it holds @want bytes (MRG_RXBUF)
 * or one chain (without). */
static enum win_stop rx_peek(struct vn_vring *vq, const struct vn_mem *mem,
			     const struct vn_rxcfg *cfg, struct vn_stats *st, uint64_t want)
{
	struct vn_work *w = vq->work;

	for (;;) {
		struct vn_chain c;
		unsigned int bad = 0;
		uint16_t head;
		int avail;

		if (cfg->mrg_rxbuf ? w->cap >= want : w->nchains == 1)
			return WIN_FULL;
		if (w->nchains == RX_MAX_IOV)
			return WIN_LIMIT;
		avail = avail_left(vq);
		if (avail >= 0 && w->nchains >= (uint32_t)avail)
			avail = vn_vring_avail_count(vq);       /* look again */
		if (avail < 0)
			return WIN_BROKEN;
		if (w->nchains >= (uint32_t)avail)
			return WIN_EMPTY;
		if (vn_vring_avail_head(vq, (uint16_t)(vq->last_avail_idx + w->nchains), &head) ||
		    vn_chain_walk(vq, mem, head, 1, w->iov + w->niov, RX_MAX_IOV - w->niov,
				  UINT64_MAX, &c))
			return WIN_BROKEN;
		if (c.fault)
			bad = walk_drop(c.fault);
		else if (c.len < cfg->hdr_sz)
			bad = VN_DROP_RX_BUF_SHORT;
		if (bad && w->nchains > 0)
			return WIN_LIMIT;       /* dealt with once it is at the front */
		if (bad) {
			rx_reject(vq, st, head, bad);
			continue;
		}
		w->head[w->nchains] = head;
		w->chain_niov[w->nchains] = c.niov;
		w->chain_cap[w->nchains] = c.len;
		w->nchains++;
		w->niov += c.niov;
		w->cap += c.len;
	}
}

/* Hand the first chains of the window, holding @total bytes, to the guest. */
static void rx_deliver(struct vn_vring *vq, const struct vn_rxcfg *cfg, struct vn_stats *st,
		       uint64_t total)
{
	struct vn_work *w = vq->work;
	uint64_t left = total, cap_used = 0;
	uint32_t k = 0, iov_used = 0;

	while (left > 0 && k < w->nchains) {
		uint64_t l = left < w->chain_cap[k] ? left : w->chain_cap[k];

		vn_vring_push(vq, w->head[k], (uint32_t)l);
		left -= l;
		cap_used += w->chain_cap[k];
		iov_used += w->chain_niov[k];
		k++;
	}
	if (cfg->hdr_sz >= HDR_MRG_SZ) {
		/* num_buffers, then zeros: the tap writes only the first 10 bytes,
		 * and a hash report (20-byte header) says "none". */
		uint8_t tail[VN_NET_HDR_MAX - HDR_NUM_BUFFERS_OFF] = { 0 };
		uint16_t nb = htole16((uint16_t)k);

		memcpy(tail, &nb, sizeof(nb));
		vn_buf_to_iov(w->iov, w->niov, HDR_NUM_BUFFERS_OFF, tail,
			      cfg->hdr_sz - HDR_NUM_BUFFERS_OFF);
	}
	st->packets++;
	st->bytes += total - cfg->hdr_sz;
	st->rx_buffers += k;
	st->chains += k;
	/* Drop the consumed chains from the window. */
	memmove(w->iov, w->iov + iov_used, (w->niov - iov_used) * sizeof(w->iov[0]));
	memmove(w->head, w->head + k, (w->nchains - k) * sizeof(w->head[0]));
	memmove(w->chain_niov, w->chain_niov + k, (w->nchains - k) * sizeof(w->chain_niov[0]));
	memmove(w->chain_cap, w->chain_cap + k, (w->nchains - k) * sizeof(w->chain_cap[0]));
	w->niov -= iov_used;
	w->nchains -= k;
	w->cap -= cap_used;
	vq->last_avail_idx = (uint16_t)(vq->last_avail_idx + k);
}

/* Bytes the window can take for one packet. */
static uint64_t win_usable(const struct vn_work *w, const struct vn_rxcfg *cfg)
{
	if (w->nchains == 0)
		return 0;
	return cfg->mrg_rxbuf ? w->cap : w->chain_cap[0];
}

/* Locked lladdr: may this frame (its first @len bytes) go to the guest?
 * Group addresses (I/G bit set) always may; unicast only to the guest. */
static int rx_dst_ok(const struct vn_rxcfg *cfg, const uint8_t *frame, size_t len)
{
	if (!cfg->locked)
		return 1;
	if (len < ETH_ALEN)
		return 0;
	return (frame[0] & 1) || memcmp(frame, cfg->lladdr, ETH_ALEN) == 0;
}

/* A tap without a vnet header: write the header the guest expects. */
static void rx_make_hdr(struct vn_work *w, const struct vn_rxcfg *cfg, struct vn_stats *st,
			size_t frame_len)
{
	memset(w->buf, 0, cfg->hdr_sz);
	if (cfg->guest_csum && vn_verify(w->buf + cfg->hdr_sz, frame_len)) {
		w->buf[0] = VN_HDR_F_DATA_VALID;
		st->rx_data_valid++;
	}
}

/* Read one packet from the tap into the window (direct) or the bounce
 * buffer.  Return its length with header (more than fits when it overran),
 * 0 for EAGAIN, -1 on error. */
static ssize_t rx_read(struct vn_work *w, int tap_fd, const struct vn_rxcfg *cfg,
		       struct vn_stats *st, int direct)
{
	size_t off = cfg->tap_has_vnet_hdr ? 0 : cfg->hdr_sz;
	uint32_t niov = cfg->mrg_rxbuf ? w->niov : w->chain_niov[0];
	ssize_t n;

	/* The slot after the window's iovecs is free (RX_MAX_IOV). */
	w->iov[niov].iov_base = w->sink;
	w->iov[niov].iov_len = sizeof(w->sink);
	do {
		if (direct)
			n = readv(tap_fd, w->iov, (int)niov + 1);
		else
			n = read(tap_fd, w->buf + off, WORK_BUF_CAP - off);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0;
		st->tap_errors++;
		return -1;
	}
	if (n == 0)
		return 0;
	/* A packet longer than any frame is dropped by the caller. */
	if (!direct && !cfg->tap_has_vnet_hdr && (size_t)n <= VN_MAX_FRAME)
		rx_make_hdr(w, cfg, st, (size_t)n);
	return n + (ssize_t)off;
}

/* Place the parked packet if the window now holds it.  Return 1 when
 * delivered, 0 when it still waits (more buffers may come), -1 when dropped. */
static int rx_unpark(struct vn_vring *vq, const struct vn_rxcfg *cfg, struct vn_stats *st,
		     enum win_stop stop)
{
	struct vn_work *w = vq->work;
	uint64_t total = w->parked_len;

	if (win_usable(w, cfg) >= total) {
		vn_buf_to_iov(w->iov, w->niov, 0, w->buf, total);
		w->parked_len = 0;
		rx_deliver(vq, cfg, st, total);
		return 1;
	}
	if (stop == WIN_EMPTY)
		return 0;
	w->parked_len = 0;
	count_drop(st, VN_DROP_RX_TRUNCATED);
	return -1;
}

/* Handle one packet read into the bounce buffer: deliver, park or drop.
 * Return 1 when delivered, 0 when parked, -1 when dropped. */
static int rx_bounced(struct vn_vring *vq, const struct vn_rxcfg *cfg, struct vn_stats *st,
		      uint64_t total, enum win_stop stop)
{
	struct vn_work *w = vq->work;

	if (total > (uint64_t)cfg->hdr_sz + VN_MAX_FRAME) {     /* cut short by the read */
		count_drop(st, VN_DROP_RX_TRUNCATED);
		return -1;
	}
	if (!rx_dst_ok(cfg, w->buf + cfg->hdr_sz, (size_t)(total - cfg->hdr_sz))) {
		count_drop(st, VN_DROP_LOCKED_DST);
		return -1;
	}
	if (total > win_usable(w, cfg)) {
		if (cfg->mrg_rxbuf && stop == WIN_EMPTY) {
			w->parked_len = (uint32_t)total;
			st->rx_parked++;
			return 0;
		}
		count_drop(st, VN_DROP_RX_TRUNCATED);
		return -1;
	}
	vn_buf_to_iov(w->iov, w->niov, 0, w->buf, total);
	rx_deliver(vq, cfg, st, total);
	return 1;
}

/* Deliver frames from the inject ring (before anything from the tap) while
 * the guest's buffers take them; *starved set when they ran out. */
static uint32_t rx_inject(struct vn_vring *vq, const struct vn_mem *mem,
			  const struct vn_rxcfg *cfg, struct vn_stats *st, int *starved)
{
	struct vn_work *w = vq->work;
	const uint8_t *f;
	uint32_t n = 0, len = 0;

	while ((f = vn_pktring_peek(cfg->inject, &len)) != NULL) {
		uint64_t total = (uint64_t)cfg->hdr_sz + len;
		uint8_t hdr[VN_NET_HDR_MAX] = { 0 };
		enum win_stop stop = rx_peek(vq, mem, cfg, st, total);

		if (stop == WIN_BROKEN)
			break;
		if (win_usable(w, cfg) < total) {
			if (w->nchains == 0 || stop == WIN_EMPTY) {
				*starved = 1;
				break;
			}
			vn_pktring_pop(cfg->inject);    /* can never fit this window */
			count_drop(st, VN_DROP_RX_TRUNCATED);
			continue;
		}
		if (cfg->guest_csum && vn_verify(f, len)) {
			hdr[0] = VN_HDR_F_DATA_VALID;
			st->rx_data_valid++;
		}
		vn_buf_to_iov(w->iov, w->niov, 0, hdr, cfg->hdr_sz);
		vn_buf_to_iov(w->iov, w->niov, cfg->hdr_sz, f, len);
		vn_pktring_pop(cfg->inject);
		rx_deliver(vq, cfg, st, total);
		st->injected++;
		n++;
	}
	return n;
}

static int rx_cfg_ok(const struct vn_rxcfg *cfg, uint64_t *max_pkt)
{
	if (!hdr_sz_ok(cfg->hdr_sz) || (cfg->mrg_rxbuf && cfg->hdr_sz < HDR_MRG_SZ))
		return 0;
	*max_pkt = cfg->max_pkt ? cfg->max_pkt : (uint64_t)cfg->hdr_sz + VN_MAX_FRAME;
	return *max_pkt >= (uint64_t)cfg->hdr_sz + VN_ETH_HLEN &&
	       *max_pkt <= (uint64_t)cfg->hdr_sz + VN_MAX_FRAME;
}

/* ---- RX with receive segment coalescing (vn_rsc.c) ---- */

/*
 * With a coalescer, every packet is read into the bounce buffer and pushed;
 * a push hands back up to VN_RSC_PUSH_MAX_OUT packets (the flow's held unit,
 * then the segment).  What the guest's buffers cannot take yet waits in
 * rsc_pending (no read and no coalescer call until it is delivered, so the
 * data it points to stays put).  Units whose time is up are delivered before
 * anything is read.  Held units wait in the coalescer, not in the tap.
 */

static uint64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The virtio_net_hdr in its little-endian wire form (num_buffers: rx_deliver). */
static void hdr_pack(const struct vn_net_hdr *h, uint8_t *b)
{
	uint16_t v[4] = { htole16(h->hdr_len), htole16(h->gso_size), htole16(h->csum_start),
			  htole16(h->csum_offset) };

	b[0] = h->flags;
	b[1] = h->gso_type;
	memcpy(b + 2, v, sizeof(v));
}

/* Deliver one coalescer output.  Return 1 when delivered, 0 when the guest's
 * buffers cannot take it yet, -1 when the ring broke. */
static int rx_deliver_out(struct vn_vring *vq, const struct vn_mem *mem,
			  const struct vn_rxcfg *cfg, struct vn_stats *st,
			  const struct vn_rsc_out *o)
{
	struct vn_work *w = vq->work;
	uint64_t total = (uint64_t)cfg->hdr_sz + o->len;
	uint8_t hdr[VN_NET_HDR_MAX] = { 0 };

	if (rx_peek(vq, mem, cfg, st, total) == WIN_BROKEN)
		return -1;
	if (win_usable(w, cfg) < total)
		return 0;
	hdr_pack(&o->hdr, hdr);
	vn_buf_to_iov(w->iov, w->niov, 0, hdr, cfg->hdr_sz);
	vn_buf_to_iov(w->iov, w->niov, cfg->hdr_sz, o->data, o->len);
	rx_deliver(vq, cfg, st, total);
	return 1;
}

/* Deliver pending outputs in order; return how many, *blocked when some wait. */
static uint32_t rx_rsc_pending(struct vn_vring *vq, const struct vn_mem *mem,
			       const struct vn_rxcfg *cfg, struct vn_stats *st, int *blocked)
{
	struct vn_work *w = vq->work;
	uint32_t n = 0;

	while (w->rsc_first < w->rsc_npending) {
		int rc = rx_deliver_out(vq, mem, cfg, st, &w->rsc_pending[w->rsc_first]);

		if (rc <= 0) {
			*blocked = 1;
			return n;
		}
		w->rsc_first++;
		n++;
	}
	w->rsc_first = w->rsc_npending = 0;
	return n;
}

/* Deliver held units (all, or those whose time is up) while buffers last.
 * Return units delivered; *starved set when the guest ran out of buffers. */
static uint32_t rx_rsc_drain(struct vn_vring *vq, const struct vn_mem *mem,
			     const struct vn_rxcfg *cfg, struct vn_stats *st,
			     int expired_only, int *starved)
{
	struct vn_work *w = vq->work;
	uint32_t delivered = rx_rsc_pending(vq, mem, cfg, st, starved);

	while (!*starved && !vq->broken && vn_rsc_held(cfg->rsc) > 0) {
		int n = expired_only ? vn_rsc_poll(cfg->rsc, monotonic_ns(), w->rsc_pending, 1)
				     : vn_rsc_flush(cfg->rsc, w->rsc_pending, 1);

		if (n <= 0)
			break;
		w->rsc_first = 0;
		w->rsc_npending = (uint32_t)n;
		delivered += rx_rsc_pending(vq, mem, cfg, st, starved);
	}
	return delivered;
}

static uint32_t rx_fill_rsc(struct vn_vring *vq, const struct vn_mem *mem, int tap_fd,
			    const struct vn_rxcfg *cfg, struct vn_stats *st, uint32_t budget,
			    uint64_t max_pkt, int *starved)
{
	struct vn_work *w = vq->work;
	size_t off = cfg->tap_has_vnet_hdr ? cfg->hdr_sz : 0;
	uint32_t delivered, taken = 0;

	w->rsc_hdr_sz = cfg->hdr_sz;
	delivered = rx_rsc_drain(vq, mem, cfg, st, 1, starved);
	while (taken < budget && !*starved && !vq->broken) {
		struct vn_net_hdr in;
		ssize_t n;
		int k;

		/* Read while the guest has posted anything: what does not fit
		 * waits in rsc_pending (a ring smaller than a maximal packet
		 * would otherwise never be read for). */
		if (rx_peek(vq, mem, cfg, st, max_pkt) == WIN_BROKEN)
			break;
		if (w->nchains == 0) {
			*starved = 1;
			break;
		}
		do {
			n = read(tap_fd, w->buf, WORK_BUF_CAP);
		} while (n < 0 && errno == EINTR);
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			st->tap_errors++;
		if (n <= 0)
			break;
		taken++;
		if ((size_t)n < off + VN_ETH_HLEN || (size_t)n > off + VN_MAX_FRAME) {
			count_drop(st, VN_DROP_RX_TRUNCATED);
			continue;
		}
		if (!rx_dst_ok(cfg, w->buf + off, (size_t)n - off)) {
			count_drop(st, VN_DROP_LOCKED_DST);
			continue;
		}
		if (off)
			hdr_parse(w->buf, &in);
		k = vn_rsc_push(cfg->rsc, off ? &in : NULL, w->buf + off, (size_t)n - off,
				monotonic_ns(), w->rsc_pending, VN_RSC_PUSH_MAX_OUT);
		w->rsc_first = 0;
		w->rsc_npending = k > 0 ? (uint32_t)k : 0;
		delivered += rx_rsc_pending(vq, mem, cfg, st, starved);
	}
	return delivered;
}

/**
 * vn_rx_rsc_flush() - deliver what the queue's coalescer holds
 * @vq: the RX queue
 * @mem: the memory table
 * @cfg: its RX configuration (cfg->rsc set, MRG_RXBUF)
 * @st: the queue's counters
 * @expired_only: 1: only units whose interval is over; 0: every held unit
 *
 * For the caller's loop: when the coalescer's deadline passes with the tap
 * quiet, and before the queue stops (so held data is not lost).
 *
 * Return: units delivered, -EIO when the ring is broken, -EINVAL when the
 * queue or configuration cannot coalesce
 */
int vn_rx_rsc_flush(struct vn_vring *vq, const struct vn_mem *mem, const struct vn_rxcfg *cfg,
		    struct vn_stats *st, int expired_only)
{
	int rc = check_queue(vq, mem, cfg, st), starved = 0;
	uint16_t used_before;
	uint64_t max_pkt;
	uint32_t n;

	if (rc)
		return rc;
	if (!rx_cfg_ok(cfg, &max_pkt) || !cfg->rsc || !cfg->mrg_rxbuf)
		return -EINVAL;
	vq->work->nchains = vq->work->niov = 0;
	vq->work->cap = 0;
	used_before = vq->last_used_idx;
	vq->work->rsc_hdr_sz = cfg->hdr_sz;
	n = rx_rsc_drain(vq, mem, cfg, st, expired_only, &starved);
	finish_batch(vq, st, used_before);
	if (vq->broken) {
		st->ring_errors[vq->broken]++;
		return -EIO;
	}
	return (int)n;
}

/**
 * vn_rx_fill() - move up to @budget packets from the tap into guest buffers
 * @vq: the RX queue
 * @mem: the memory table
 * @tap_fd: the tap (non-blocking)
 * @cfg: header size, MRG_RXBUF, GUEST_CSUM, largest packet
 * @st: the queue's counters
 * @budget: most packets to take from the tap
 *
 * Return: packets delivered; -ENOBUFS when none was and the guest has no
 * (or too few) buffers: nothing was read then, except a packet now parked
 * for later; -EIO when the ring is (or became) broken; -EINVAL for a bad
 * argument or a queue not set up
 */
int vn_rx_fill(struct vn_vring *vq, const struct vn_mem *mem, int tap_fd,
	       const struct vn_rxcfg *cfg, struct vn_stats *st, uint32_t budget)
{
	int rc = check_queue(vq, mem, cfg, st), starved = 0;
	uint32_t delivered = 0, taken = 0;
	uint16_t used_before;
	uint64_t max_pkt;
	struct vn_work *w;

	if (rc)
		return rc;
	if (!rx_cfg_ok(cfg, &max_pkt))
		return -EINVAL;
	w = vq->work;
	w->nchains = w->niov = 0;
	w->cap = 0;
	used_before = vq->last_used_idx;
	if (cfg->inject)
		delivered = rx_inject(vq, mem, cfg, st, &starved);
	if (starved)
		taken = budget;         /* the guest has no room for more */
	else if (cfg->rsc && cfg->mrg_rxbuf && !w->parked_len) {
		delivered += rx_fill_rsc(vq, mem, tap_fd, cfg, st, budget, max_pkt, &starved);
		taken = budget;         /* skip the plain loop */
	}
	while (taken < budget) {
		enum win_stop stop = rx_peek(vq, mem, cfg, st, w->parked_len ? w->parked_len : max_pkt);
		ssize_t n;
		int direct;

		if (stop == WIN_BROKEN)
			break;
		if (w->nchains == 0) {
			starved = 1;
			break;
		}
		if (w->parked_len) {
			rc = rx_unpark(vq, cfg, st, stop);
			if (rc == 0) {
				starved = 1;
				break;
			}
			taken++;
			delivered += rc > 0;
			continue;
		}
		/* Locked: through the bounce buffer, checked before the guest sees it. */
		direct = cfg->tap_has_vnet_hdr && !cfg->locked && win_usable(w, cfg) >= max_pkt;
		n = rx_read(w, tap_fd, cfg, st, direct);
		if (n <= 0)
			break;
		taken++;
		if (direct) {
			if ((uint64_t)n > win_usable(w, cfg) || (size_t)n < cfg->hdr_sz) {
				count_drop(st, VN_DROP_RX_TRUNCATED);
				continue;
			}
			rx_deliver(vq, cfg, st, (uint64_t)n);
			delivered++;
			continue;
		}
		rc = rx_bounced(vq, cfg, st, (uint64_t)n, stop);
		if (rc == 0) {
			starved = 1;
			break;
		}
		delivered += rc > 0;
	}
	finish_batch(vq, st, used_before);
	if (vq->broken) {
		st->ring_errors[vq->broken]++;
		return -EIO;
	}
	if (delivered == 0 && starved)
		return -ENOBUFS;
	return (int)delivered;
}

/**
 * vn_rx_discard() - drop the parked packet and up to @budget packets from the tap
 * @vq: the RX queue (only its work area is used)
 * @tap_fd: the tap (non-blocking)
 * @st: the queue's counters (drops[VN_DROP_RX_NO_BUFFERS])
 * @budget: most packets to read and drop
 *
 * For the caller's loop when the guest posts no buffers for too long.
 *
 * Return: packets dropped, or -EINVAL
 */
int vn_rx_discard(struct vn_vring *vq, int tap_fd, struct vn_stats *st, uint32_t budget)
{
	struct vn_work *w;
	uint32_t n = 0;

	if (!vq || !st)
		return -EINVAL;
	w = vq->work;
	if (w->parked_len) {
		w->parked_len = 0;
		count_drop(st, VN_DROP_RX_NO_BUFFERS);
		n++;
	}
	for (; w->rsc_first < w->rsc_npending; w->rsc_first++, n++)
		count_drop(st, VN_DROP_RX_NO_BUFFERS);
	w->rsc_first = w->rsc_npending = 0;
	while (n < budget) {
		ssize_t r = read(tap_fd, w->buf, WORK_BUF_CAP);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		count_drop(st, VN_DROP_RX_NO_BUFFERS);
		n++;
	}
	return (int)n;
}

/**
 * vn_rx_parked_len() - length of the RX packet waiting for guest buffers
 * @vq: the RX queue
 *
 * A coalescer output the guest's buffers could not take yet counts as parked.
 *
 * Return: its length with header, 0 when none is parked
 */
uint32_t vn_rx_parked_len(const struct vn_vring *vq)
{
	const struct vn_work *w = vq ? vq->work : NULL;

	if (!w)
		return 0;
	if (w->parked_len)
		return w->parked_len;
	if (w->rsc_first < w->rsc_npending)
		return w->rsc_hdr_sz + w->rsc_pending[w->rsc_first].len;
	return 0;
}
