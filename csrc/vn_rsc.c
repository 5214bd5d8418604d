/*
 * vn_rsc.c - receive segment coalescing (RSC) of TCP segments for the guest.
 *
 * Theory of operation
 *
 * The RX path pushes each Ethernet frame it got from the tap, with the time
 * (passed in, never read here).  A TCP segment that is a candidate is either
 * appended to the unit its flow holds, or starts a new unit; everything else
 * comes back at once.  A unit leaves when a segment cannot join it, when a
 * segment closes it (PSH, or shorter than the first), when its interval has
 * run out (vn_rsc_poll(), or the flow's next push), when its flow is evicted
 * for a new one, or on vn_rsc_flush().  Whatever a push returns is in
 * delivery order: a flow's held unit always leaves before any later segment
 * of that flow, so nothing is reordered.
 *
 * Which segments join, re-derived from Linux GRO (net/core/gro.c,
 * net/ipv4/tcp_offload.c tcp_gro_receive, include/net/gro.h inet_gro_flush)
 * and QEMU (hw/net/virtio-net.c virtio_net_rsc_*), written for this project:
 *   - same flow: IP version, addresses and ports (the hash key), and the same
 *     L2 header (MACs, VLAN tags), as GRO compares the MAC header (a segment
 *     whose L2 header differs delivers its flow's unit and starts a new one,
 *     where GRO would hold both).  Tagged flows coalesce, as GRO does when
 *     built with CONFIG_VLAN_8021Q (the oracle's kernel is not);
 *   - in order: sequence == the unit's next sequence;
 *   - same TOS/traffic class, TTL/hop limit, DF, IPv6 flow label, TCP data
 *     offset, flags other than PSH, urgent pointer and option bytes.  TCP
 *     timestamps therefore coalesce while TSval/TSecr stay the same, as GRO
 *     does (QEMU refuses any option);
 *   - IPv4 ID: the head's + the segment's index (GRO's incrementing IDs); in
 *     rsc mode also one fixed ID (GRO's fixed-ID flows; Linux 6.18 no longer
 *     asks for DF there).  gso mode refuses fixed IDs: virtio has no FIXEDID
 *     flag, so a guest re-segmenting the packet would invent incrementing IDs
 *     (and Linux itself re-segments such a GRO packet before a tap that lacks
 *     TSO_MANGLEID: the oracle shows it);
 *   - ACK: gso mode wants the head's ACK and window unchanged (GRO: any change
 *     of either flushes, so that re-segmenting gives back the very segments
 *     received); rsc mode also takes an ACK that moved forward by less than
 *     RSC_WINDOW and then carries the newest ACK and window (QEMU does the
 *     same; the guest terminates the connection);
 *   - payload no longer than the head's (GRO's mss rule) and the IP packet no
 *     longer than max_bytes.
 * Bypassed untouched and counted: not IP, EtherType/version mismatch, IPv4
 * options, IPv6 extension headers, fragments, not TCP, an IP version not
 * coalesced, bad IPv4 header or TCP checksums, inconsistent lengths, frames
 * too large, SYN, and frames whose input header already carries an offload.
 * A bad checksum leaves the flow's unit held (GRO does the same: the packet
 * is dropped by the guest anyway); SYN and a too-large segment deliver the
 * flow's unit first.
 * FIN, RST, URG, CWR and ECE deliver the flow's unit, then the segment alone.
 * This differs on purpose from GRO, which appends a FIN segment to the unit
 * and lets consecutive ECE segments coalesce: the rule here is QEMU's and the
 * issue's, and keeps control segments visible to an RSC guest one by one.
 * A segment without payload delivers the unit, then itself (GRO: its length
 * is never below the mss test), except in rsc mode, where a duplicate ACK
 * (same ACK, window, sequence and headers) is absorbed into the unit and
 * counted in its header (csum_offset), as RSC hardware reports DupAckCount.
 * Ethernet padding after the IP packet delivers the unit, then the segment
 * (GRO flushes such a packet: its length disagrees with the IP header).
 *
 * Output.  A unit of one segment leaves as received (DATA_VALID if asked; a
 * segment delivered alone is DATA_VALID too, since it was verified, where
 * GRO leaves a padded one unmarked: it skips validating what it flushes).
 * Segments the tap hands over with NEEDS_CSUM (made by the host's own stack,
 * check field = pseudo-header sum) coalesce as well, their payload taken as
 * it is; alone they keep NEEDS_CSUM, in a unit the unit's checksum rules hold.
 * gso mode: a unit of more leaves the way Linux GRO hands it to a tap reader:
 * NEEDS_CSUM, csum_start at the TCP header, csum_offset 16, gso_type
 * TCPV4/TCPV6, gso_size = the first segment's payload, IP lengths and the
 * IPv4 header checksum rewritten, the TCP check field holding the folded,
 * non-inverted pseudo-header sum over the full TCP length.  hdr_len is the
 * header length (the kernel reports its linear head length there, a hint).
 * rsc mode: RSC_INFO (+ DATA_VALID if asked), segments in csum_start,
 * duplicate ACKs in csum_offset, gso_type and gso_size as above, and a full,
 * correct TCP checksum (the payload sum is gathered while copying).
 *
 * Memory.  vn_rsc_new() allocates the flow table and max_flows + 1 unit
 * buffers once; a push never allocates.  A delivered unit's buffer stays
 * untouched until the next call into the coalescer (vn_rsc_push, _poll,
 * _flush, _push_batch), so outputs point into it; the spare buffer is what a
 * new unit is built in while the old one is being delivered.  A candidate's
 * payload is copied and summed in one pass (vn_csum_copy), so checking its
 * checksum costs no extra read; with an input header saying DATA_VALID the
 * checksum is trusted and the payload sum (rsc mode) is derived from the
 * check field instead.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vn_csum.h"
#include "vn_pkt.h"
#include "vn_rsc.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80
#define IPV4_DF 0x4000
#define IPV4_FRAG_MASK 0x3fff   /* MF + fragment offset */
#define TCP_CHECK_OFF 16
#define TCP_URP_OFF 18
/* Hash buckets: a power of two, twice the flows, so chains stay short. */
#define RSC_BUCKETS 128
/* Room before the IP header in a unit buffer: Ethernet and two VLAN tags. */
#define RSC_L2_MAX (VN_ETH_HLEN + VN_MAX_VLAN_TAGS * VN_VLAN_HLEN)
/* Unit buffers start on cache lines. */
#define RSC_BUF_ALIGN 64
/* QEMU's sanity window for sequence and ACK distances (64 KiB - 1). */
#define RSC_WINDOW 65535u
/* Flow key: IPv6 source + destination (32 bytes) and the two ports. */
#define RSC_KEY_MAX 36
#define RSC_KEY_V4 12
#define RSC_NONE (-1)

enum ipid_mode { IPID_UNKNOWN, IPID_INCREMENT, IPID_FIXED };
enum verdict { V_CANDIDATE, V_BYPASS, V_BYPASS_FLUSH };

/* A parsed candidate segment (offsets from the frame start). */
struct seg {
	const uint8_t *f;
	size_t len;
	uint32_t ip_end;        /* end of the IP packet */
	uint32_t seq, ack;
	uint32_t hash;
	uint16_t l3, l4, pay;   /* IP header, TCP header, payload */
	uint16_t plen;          /* payload bytes */
	uint16_t ip_len;        /* IP header + TCP header + payload */
	uint16_t window;
	uint16_t ipid;
	uint8_t version;
	uint8_t flags;          /* TCP flags byte */
	uint8_t thlen;          /* TCP header length */
	uint8_t partial;        /* NEEDS_CSUM from the tap: check field holds the pseudo sum */
	uint8_t key_len;
	uint8_t key[RSC_KEY_MAX];
};

/* A flow that holds a unit; its head's headers are at the start of buf. */
struct rsc_flow {
	uint8_t *buf;
	uint64_t deadline;
	uint64_t last_used;
	uint32_t len;           /* bytes of the unit frame in buf */
	uint32_t psum;          /* rsc mode: payload sum (memory order) */
	uint32_t next_seq, head_seq, ack;
	uint32_t hash;
	uint16_t l3, l4, pay;
	uint16_t ip_len;
	uint16_t mss;
	uint16_t segs;
	uint16_t dup_acks;
	uint16_t head_ipid;
	uint16_t window;
	int16_t next;           /* hash chain */
	int16_t buf_idx;
	uint8_t active_pos;
	uint8_t version;
	uint8_t ipid_mode;
	uint8_t partial;        /* its head came with a partial checksum (NEEDS_CSUM) */
	uint8_t key_len;
	uint8_t key[RSC_KEY_MAX];
};

/*
 * How far a segment's TCP checksum is known: TRUST_VERIFY (check it),
 * TRUST_VALID (the tap said DATA_VALID), TRUST_PARTIAL (the tap said
 * NEEDS_CSUM: locally made data, the check field holds only the pseudo-header
 * sum; the payload is taken as it is and its sum computed on the copy).
 */
#define TRUST_VERIFY 0
#define TRUST_VALID 1
#define TRUST_PARTIAL 2

struct vn_rsc {
	struct vn_rsc_cfg cfg;
	struct vn_rsc_stats st;
	uint8_t *pool;
	size_t buf_size;
	uint32_t nbufs;
	uint32_t n_free_bufs, n_inflight, n_free_flows, n_active;
	uint64_t tick;
	uint64_t next_deadline;
	int dl_dirty;
	int16_t free_bufs[VN_RSC_MAX_FLOWS + 1];
	int16_t inflight[VN_RSC_MAX_FLOWS + 1];
	int16_t free_flows[VN_RSC_MAX_FLOWS];
	int16_t active[VN_RSC_MAX_FLOWS];
	int16_t buckets[RSC_BUCKETS];
	struct rsc_flow flows[VN_RSC_MAX_FLOWS];
};

/* Where one call's outputs go. */
struct outq {
	struct vn_rsc_out *o;
	uint32_t n, cap;
};

/* A sum of bytes at odd offsets, moved to even ones (RFC 1071 byte swap). */
static inline uint16_t bswap16(uint16_t v)
{
	return (uint16_t)((v << 8) | (v >> 8));
}

/* Sum (memory order) of a header whose length is a multiple of 2: inline
 * 32-bit loads, cheaper than vn_csum_partial()'s set-up for the 8..60 bytes
 * of headers. */
static inline uint32_t hdr_sum(const uint8_t *p, size_t n, uint32_t init)
{
	uint64_t acc = init;
	uint32_t w;
	size_t i;

	for (i = 0; i + 4 <= n; i += 4) {
		memcpy(&w, p + i, 4);
		acc += w;
	}
	if (i < n)
		acc += vn_load16(p + i);
	acc = (acc & 0xffffffffu) + (acc >> 32);
	return (uint32_t)((acc & 0xffffffffu) + (acc >> 32));
}

/* ------------------------------------------------------------------ */
/* Parsing                                                            */
/* ------------------------------------------------------------------ */

/* Hash of a flow key (a multiple of 4 bytes long). */
static uint32_t key_hash(const uint8_t *key, size_t n)
{
	uint32_t h = 0x811c9dc5u, w;
	size_t i;

	for (i = 0; i < n; i += 4) {
		memcpy(&w, key + i, 4);
		h = (h ^ w) * 0x9e3779b1u;
	}
	return h ^ (h >> 16);
}

/* The flow key (addresses, ports) and its hash. */
static void make_key(struct seg *s)
{
	const uint8_t *ip = s->f + s->l3;

	if (s->version == 4) {
		memcpy(s->key, ip + 12, 8);
		memcpy(s->key + 8, s->f + s->l4, 4);
		s->key_len = RSC_KEY_V4;
	} else {
		memcpy(s->key, ip + 8, 32);
		memcpy(s->key + 32, s->f + s->l4, 4);
		s->key_len = RSC_KEY_MAX;
	}
	s->hash = key_hash(s->key, s->key_len);
}

/* Walk Ethernet and VLAN tags: the EtherType, or -1 when a tag is cut short. */
static int parse_l2(const uint8_t *f, size_t len, uint16_t *l3)
{
	size_t off = VN_ETH_HLEN;
	uint16_t proto = vn_get16(f + 12);
	int tags = 0;

	while ((proto == VN_ETH_P_8021Q || proto == VN_ETH_P_8021AD) &&
	       tags < VN_MAX_VLAN_TAGS) {
		if (len < off + VN_VLAN_HLEN)
			return -1;
		proto = vn_get16(f + off + 2);
		off += VN_VLAN_HLEN;
		tags++;
	}
	*l3 = (uint16_t)off;
	return proto;
}

/* IPv4 header: a candidate is option-free, unfragmented TCP with a good header sum. */
static enum verdict parse_ipv4(struct vn_rsc *r, struct seg *s, uint64_t **why)
{
	const uint8_t *ip = s->f + s->l3;
	size_t ihl, tot;

	if (s->len < (size_t)s->l3 + VN_IPV4_HLEN)
		return *why = &r->st.bypass_too_small, V_BYPASS;
	if ((ip[0] >> 4) != 4)
		return *why = &r->st.bypass_ip_version, V_BYPASS;
	ihl = (size_t)(ip[0] & 0x0f) * 4;
	tot = vn_get16(ip + 2);
	if (ihl < VN_IPV4_HLEN || tot < ihl || s->l3 + tot > s->len)
		return *why = &r->st.bypass_too_small, V_BYPASS;
	if (vn_get16(ip + 6) & IPV4_FRAG_MASK)
		return *why = &r->st.bypass_fragment, V_BYPASS;
	if (ip[9] != VN_IPPROTO_TCP)
		return *why = &r->st.bypass_not_tcp, V_BYPASS;
	if (ihl != VN_IPV4_HLEN)
		return *why = &r->st.bypass_ip_options, V_BYPASS;
	if (!r->cfg.ipv4)
		return *why = &r->st.bypass_disabled, V_BYPASS;
	if (vn_csum_fold(hdr_sum(ip, VN_IPV4_HLEN, 0)) != 0xffff)
		return *why = &r->st.bypass_bad_csum, V_BYPASS;
	s->version = 4;
	s->ip_len = (uint16_t)tot;
	s->ipid = vn_get16(ip + 4);
	s->l4 = (uint16_t)(s->l3 + VN_IPV4_HLEN);
	return V_CANDIDATE;
}

/* IPv6 header: a candidate carries TCP right after it. */
static enum verdict parse_ipv6(struct vn_rsc *r, struct seg *s, uint64_t **why)
{
	const uint8_t *ip = s->f + s->l3;
	size_t plen;
	uint8_t nh;

	if (s->len < (size_t)s->l3 + VN_IPV6_HLEN)
		return *why = &r->st.bypass_too_small, V_BYPASS;
	if ((ip[0] >> 4) != 6)
		return *why = &r->st.bypass_ip_version, V_BYPASS;
	plen = vn_get16(ip + 4);
	/* payload_len 0 is a jumbogram (hop-by-hop option): not for us. */
	if (plen == 0 || s->l3 + VN_IPV6_HLEN + plen > s->len)
		return *why = &r->st.bypass_too_small, V_BYPASS;
	nh = ip[6];
	if (nh == VN_IPPROTO_FRAGMENT)
		return *why = &r->st.bypass_fragment, V_BYPASS;
	if (nh == VN_IPPROTO_HOPOPTS || nh == VN_IPPROTO_ROUTING || nh == VN_IPPROTO_DSTOPTS)
		return *why = &r->st.bypass_ipv6_ext, V_BYPASS;
	if (nh != VN_IPPROTO_TCP)
		return *why = &r->st.bypass_not_tcp, V_BYPASS;
	if (!r->cfg.ipv6)
		return *why = &r->st.bypass_disabled, V_BYPASS;
	/* VN_RSC_MAX_BYTES keeps a held IPv6 packet within 16 bits. */
	if (VN_IPV6_HLEN + plen > VN_RSC_MAX_BYTES)
		return *why = &r->st.bypass_too_large, V_BYPASS;
	s->version = 6;
	s->ip_len = (uint16_t)(VN_IPV6_HLEN + plen);
	s->ipid = 0;
	s->l4 = (uint16_t)(s->l3 + VN_IPV6_HLEN);
	return V_CANDIDATE;
}

/* TCP header inside the IP packet; SYN and oversize bypass after their flow's unit. */
static enum verdict parse_tcp(struct vn_rsc *r, struct seg *s, uint64_t **why)
{
	const uint8_t *t = s->f + s->l4;
	size_t thlen;

	s->ip_end = (uint32_t)s->l3 + s->ip_len;
	if ((size_t)s->l4 + VN_TCP_HLEN > s->ip_end)
		return *why = &r->st.bypass_too_small, V_BYPASS;
	thlen = (size_t)(t[12] >> 4) * 4;
	if (thlen < VN_TCP_HLEN || s->l4 + thlen > s->ip_end)
		return *why = &r->st.bypass_too_small, V_BYPASS;
	s->thlen = (uint8_t)thlen;
	s->pay = (uint16_t)(s->l4 + thlen);
	s->plen = (uint16_t)(s->ip_end - s->pay);
	s->seq = vn_get32(t + 4);
	s->ack = vn_get32(t + 8);
	s->flags = t[13];
	s->window = vn_get16(t + 14);
	make_key(s);
	if (s->ip_len > r->cfg.max_bytes)
		return *why = &r->st.bypass_too_large, V_BYPASS_FLUSH;
	if (s->flags & TCP_SYN)
		return *why = &r->st.bypass_syn, V_BYPASS_FLUSH;
	return V_CANDIDATE;
}

/* Classify a frame: a candidate (fills @s), or a bypass reason in @why. */
static enum verdict parse_seg(struct vn_rsc *r, const uint8_t *f, size_t len, struct seg *s,
			      uint64_t **why)
{
	enum verdict v;
	int proto;

	s->f = f;
	s->len = len;
	if (len < VN_ETH_HLEN)
		return *why = &r->st.bypass_too_small, V_BYPASS;
	if (len > VN_MAX_FRAME)
		return *why = &r->st.bypass_too_large, V_BYPASS;
	proto = parse_l2(f, len, &s->l3);
	if (proto < 0)
		return *why = &r->st.bypass_too_small, V_BYPASS;
	if (proto == VN_ETH_P_IP)
		v = parse_ipv4(r, s, why);
	else if (proto == VN_ETH_P_IPV6)
		v = parse_ipv6(r, s, why);
	else
		return *why = &r->st.bypass_not_ip, V_BYPASS;
	if (v != V_CANDIDATE)
		return v;
	return parse_tcp(r, s, why);
}

/* ------------------------------------------------------------------ */
/* Checksums                                                          */
/* ------------------------------------------------------------------ */

/* Pseudo-header sum (memory order) of a TCP segment @tcp_len bytes long. */
static uint32_t pseudo_sum(const uint8_t *ip, uint8_t version, uint32_t tcp_len)
{
	uint32_t s;

	if (version == 4)
		s = hdr_sum(ip + 12, 8, 0);
	else
		s = hdr_sum(ip + 8, 32, 0);
	s = vn_csum_add(s, htons(VN_IPPROTO_TCP));
	return vn_csum_add(s, htons((uint16_t)tcp_len));
}

/* Sum of the pseudo-header and the TCP header (check field included). */
static uint32_t seg_head_sum(const struct seg *s)
{
	uint32_t sum = pseudo_sum(s->f + s->l3, s->version, (uint32_t)(s->ip_end - s->l4));

	return hdr_sum(s->f + s->l4, s->thlen, sum);
}

/* Is the segment's TCP checksum right, given its payload's sum? */
static int seg_csum_ok(const struct seg *s, uint32_t payload_sum)
{
	return vn_csum_fold(vn_csum_add(seg_head_sum(s), payload_sum)) == 0xffff;
}

/* Verify a segment delivered without being copied (a separate read). */
static int seg_verify(const struct seg *s, int trusted)
{
	if (trusted)
		return 1;
	return seg_csum_ok(s, vn_csum_partial(s->f + s->pay, s->plen, 0));
}

/* Payload sum of a segment whose checksum is known good, from its header:
 * pseudo + header + payload folds to -0, so payload = ~(pseudo + header). */
static uint16_t derived_payload_sum(const struct seg *s)
{
	return (uint16_t)~vn_csum_fold(seg_head_sum(s));
}

/* ------------------------------------------------------------------ */
/* Buffers, flows, outputs                                            */
/* ------------------------------------------------------------------ */

/* Unit buffer number @idx. */
static uint8_t *buf_at(const struct vn_rsc *r, int16_t idx)
{
	return r->pool + (size_t)idx * r->buf_size;
}

/* Buffers of units delivered by the previous call become free again. */
static void release_inflight(struct vn_rsc *r)
{
	while (r->n_inflight)
		r->free_bufs[r->n_free_bufs++] = r->inflight[--r->n_inflight];
}

/* The flow holding a unit for @s's key, or NULL. */
static struct rsc_flow *lookup(struct vn_rsc *r, const struct seg *s)
{
	int16_t i = r->buckets[s->hash & (RSC_BUCKETS - 1)];

	while (i != RSC_NONE) {
		struct rsc_flow *fl = &r->flows[i];

		if (fl->hash == s->hash && fl->key_len == s->key_len &&
		    memcmp(fl->key, s->key, s->key_len) == 0)
			return fl;
		i = fl->next;
	}
	return NULL;
}

/* Free a flow whose unit was delivered; its buffer is in flight until the next call. */
static void unlink_flow(struct vn_rsc *r, struct rsc_flow *fl)
{
	int16_t idx = (int16_t)(fl - r->flows);
	int16_t *pp = &r->buckets[fl->hash & (RSC_BUCKETS - 1)];
	uint32_t pos = fl->active_pos;

	while (*pp != idx)
		pp = &r->flows[*pp].next;
	*pp = fl->next;
	r->active[pos] = r->active[--r->n_active];
	r->flows[r->active[pos]].active_pos = (uint8_t)pos;
	r->free_flows[r->n_free_flows++] = idx;
	r->inflight[r->n_inflight++] = fl->buf_idx;
	if (fl->deadline == r->next_deadline)
		r->dl_dirty = 1;
}

/* The earliest deadline of a held unit (UINT64_MAX: none), cached. */
static uint64_t earliest_deadline(struct vn_rsc *r)
{
	uint64_t best = UINT64_MAX;
	uint32_t i;

	if (!r->dl_dirty)
		return r->next_deadline;
	for (i = 0; i < r->n_active; i++) {
		uint64_t d = r->flows[r->active[i]].deadline;

		if (d < best)
			best = d;
	}
	r->next_deadline = best;
	r->dl_dirty = 0;
	return best;
}

/* The next output entry, zeroed (callers ensured there is room). */
static struct vn_rsc_out *out_take(struct outq *q)
{
	struct vn_rsc_out *o = &q->o[q->n++];

	memset(o, 0, sizeof(*o));
	return o;
}

/* Deliver an input frame untouched, with its input header (bypass). */
static void emit_frame(struct vn_rsc *r, struct outq *q, const struct vn_net_hdr *in_hdr,
		       const uint8_t *f, size_t len)
{
	struct vn_rsc_out *o = out_take(q);

	if (in_hdr)
		o->hdr = *in_hdr;
	o->data = f;
	o->len = (uint32_t)len;
	o->kind = VN_RSC_OUT_BYPASS;
	r->st.delivered++;
}

/* A segment as the tap gave it: its checksum still to be completed. */
static void partial_hdr(struct vn_net_hdr *h, uint16_t l4, uint16_t pay)
{
	h->flags = VN_HDR_F_NEEDS_CSUM;
	h->gso_type = VN_GSO_NONE;
	h->hdr_len = pay;
	h->csum_start = l4;
	h->csum_offset = TCP_CHECK_OFF;
}

/* Deliver a verified (or partial-checksum) segment alone, as received. */
static void emit_segment(struct vn_rsc *r, struct outq *q, const struct seg *s)
{
	struct vn_rsc_out *o = out_take(q);

	if (s->partial)
		partial_hdr(&o->hdr, s->l4, s->pay);
	else
		o->hdr.flags = r->cfg.data_valid ? VN_HDR_F_DATA_VALID : 0;
	o->data = s->f;
	o->len = (uint32_t)s->len;
	o->segs = 1;
	o->kind = VN_RSC_OUT_SEGMENT;
	r->st.delivered++;
}

/* Rewrite the IP length fields of a unit of several segments. */
static void fix_ip_len(struct rsc_flow *fl)
{
	uint8_t *ip = fl->buf + fl->l3;

	if (fl->version == 4) {
		vn_put16(ip + 2, fl->ip_len);
		vn_store16(ip + 10, 0);
		vn_store16(ip + 10, (uint16_t)~vn_csum_fold(hdr_sum(ip, VN_IPV4_HLEN, 0)));
	} else {
		vn_put16(ip + 4, (uint16_t)(fl->ip_len - VN_IPV6_HLEN));
	}
}

/* gso mode: make a unit of several segments what GRO hands a tap reader. */
static void finish_gso(struct vn_rsc *r, struct rsc_flow *fl, struct vn_net_hdr *h)
{
	uint8_t *ip = fl->buf + fl->l3;
	uint32_t tcp_len = fl->len - fl->l4;

	fix_ip_len(fl);
	vn_store16(fl->buf + fl->l4 + TCP_CHECK_OFF,
		vn_csum_fold(pseudo_sum(ip, fl->version, tcp_len)));
	h->flags = VN_HDR_F_NEEDS_CSUM;
	h->gso_type = fl->version == 4 ? VN_GSO_TCPV4 : VN_GSO_TCPV6;
	h->hdr_len = fl->pay;
	h->gso_size = fl->mss;
	h->csum_start = fl->l4;
	h->csum_offset = TCP_CHECK_OFF;
}

/* rsc mode: RSC_INFO header, full TCP checksum. */
static void finish_rsc(struct vn_rsc *r, struct rsc_flow *fl, struct vn_net_hdr *h)
{
	uint8_t *ip = fl->buf + fl->l3, *t = fl->buf + fl->l4;
	uint32_t sum;

	fix_ip_len(fl);
	vn_store16(t + TCP_CHECK_OFF, 0);
	sum = pseudo_sum(ip, fl->version, fl->len - fl->l4);
	sum = hdr_sum(t, (size_t)(fl->pay - fl->l4), sum);
	sum = vn_csum_add(sum, fl->psum);
	vn_store16(t + TCP_CHECK_OFF, (uint16_t)~vn_csum_fold(sum));
	h->flags = (uint8_t)(VN_HDR_F_RSC_INFO | (r->cfg.data_valid ? VN_HDR_F_DATA_VALID : 0));
	h->gso_type = fl->version == 4 ? VN_GSO_TCPV4 : VN_GSO_TCPV6;
	h->hdr_len = fl->pay;
	h->gso_size = fl->mss;
	h->csum_start = fl->segs;
	h->csum_offset = fl->dup_acks;
}

/* Deliver a flow's unit and free the flow; its buffer lives until the next call. */
static void emit_unit(struct vn_rsc *r, struct outq *q, struct rsc_flow *fl)
{
	struct vn_rsc_out *o = out_take(q);

	o->data = fl->buf;
	o->len = fl->len;
	o->segs = fl->segs;
	o->kind = VN_RSC_OUT_UNIT;
	if (fl->segs == 1 && fl->dup_acks == 0 && fl->partial)
		partial_hdr(&o->hdr, fl->l4, fl->pay);
	else if (fl->segs == 1 && fl->dup_acks == 0)
		o->hdr.flags = r->cfg.data_valid ? VN_HDR_F_DATA_VALID : 0;
	else if (r->cfg.mode == VN_RSC_MODE_RSC)
		finish_rsc(r, fl, &o->hdr);
	else
		finish_gso(r, fl, &o->hdr);
	r->st.units++;
	if (fl->segs > 1)
		r->st.units_coalesced++;
	r->st.delivered++;
	unlink_flow(r, fl);
}

/* Make room for a new flow: deliver the least recently used unit. */
static void evict_lru(struct vn_rsc *r, struct outq *q)
{
	struct rsc_flow *victim = NULL;
	uint32_t i;

	for (i = 0; i < r->n_active; i++) {
		struct rsc_flow *fl = &r->flows[r->active[i]];

		if (!victim || fl->last_used < victim->last_used)
			victim = fl;
	}
	r->st.evictions++;
	emit_unit(r, q, victim);
}

/* ------------------------------------------------------------------ */
/* Coalescing                                                         */
/* ------------------------------------------------------------------ */

/* Do @s's headers equal the unit head's, apart from what may change? */
static uint64_t *header_check(struct vn_rsc *r, const struct rsc_flow *fl, const struct seg *s)
{
	const uint8_t *h = fl->buf, *f = s->f;
	const uint8_t *ip = f + s->l3, *hip = h + fl->l3;
	const uint8_t *t = f + s->l4, *ht = h + fl->l4;

	if (s->l3 != fl->l3 || memcmp(f, h, s->l3) != 0)
		return &r->st.header_mismatch;
	if (s->version == 4) {
		if (ip[1] != hip[1] || ip[8] != hip[8] ||
		    ((vn_get16(ip + 6) ^ vn_get16(hip + 6)) & IPV4_DF))
			return &r->st.header_mismatch;
	} else if (memcmp(ip, hip, 4) != 0 || ip[7] != hip[7]) {
		return &r->st.header_mismatch;
	}
	if (t[12] != ht[12]) {
		if ((t[12] >> 4) != (ht[12] >> 4))
			return &r->st.options_mismatch;
		return &r->st.header_mismatch;
	}
	if (((t[13] ^ ht[13]) & (uint8_t)~TCP_PSH) ||
	    memcmp(t + TCP_URP_OFF, ht + TCP_URP_OFF, 2) != 0)
		return &r->st.header_mismatch;
	if (memcmp(t + VN_TCP_HLEN, ht + VN_TCP_HLEN, (size_t)s->thlen - VN_TCP_HLEN) != 0)
		return &r->st.options_mismatch;
	return NULL;
}

/* IPv4 ID rule: incrementing from the head (absorbed duplicate ACKs used
 * IDs too), or (rsc mode) fixed. */
static int ipid_ok(const struct vn_rsc *r, const struct rsc_flow *fl, const struct seg *s)
{
	uint16_t inc = (uint16_t)(fl->head_ipid + fl->segs + fl->dup_acks);
	int fixed_ok = r->cfg.mode == VN_RSC_MODE_RSC && s->ipid == fl->head_ipid;

	if (s->version != 4)
		return 1;
	switch (fl->ipid_mode) {
	case IPID_INCREMENT:
		return s->ipid == inc;
	case IPID_FIXED:
		return fixed_ok;
	default:
		return s->ipid == inc || fixed_ok;
	}
}

/* NULL when @s may join @fl's unit, else the counter saying why not. */
static uint64_t *merge_check(struct vn_rsc *r, const struct rsc_flow *fl, const struct seg *s)
{
	uint64_t *why = header_check(r, fl, s);
	uint32_t dack = s->ack - fl->ack;

	if (why)
		return why;
	if (s->seq != fl->next_seq) {
		if (s->seq - fl->head_seq >= RSC_WINDOW)
			return &r->st.out_of_window;
		return &r->st.out_of_order;
	}
	if (r->cfg.mode == VN_RSC_MODE_GSO) {
		if (dack)
			return &r->st.ack_changed;
		if (s->window != fl->window)
			return &r->st.window_updates;
	} else {
		if (dack >= RSC_WINDOW)
			return &r->st.out_of_window;
		if (!dack && s->window != fl->window)
			return &r->st.window_updates;
	}
	if (!ipid_ok(r, fl, s))
		return &r->st.header_mismatch;
	if (s->plen > fl->mss)
		return &r->st.mss_exceeded;
	if ((uint32_t)fl->ip_len + s->plen > r->cfg.max_bytes)
		return &r->st.over_size;
	return NULL;
}

/* Add a chunk's sum to the unit's payload sum; @odd: it starts at an odd offset. */
static uint32_t psum_add(uint32_t psum, uint32_t chunk, int odd)
{
	uint16_t c = vn_csum_fold(chunk);

	return vn_csum_add(psum, odd ? bswap16(c) : c);
}

/* Copy @s's payload to the end of the unit; -1 (nothing kept) if its checksum is bad. */
static int copy_payload(struct vn_rsc *r, struct rsc_flow *fl, const struct seg *s, int trusted)
{
	uint8_t *dst = fl->buf + fl->len;
	int odd = ((fl->len - fl->pay) & 1) != 0;
	uint32_t sum;

	if (trusted == TRUST_VALID) {
		memcpy(dst, s->f + s->pay, s->plen);
		if (r->cfg.mode == VN_RSC_MODE_RSC)
			fl->psum = psum_add(fl->psum, derived_payload_sum(s), odd);
	} else if (trusted == TRUST_PARTIAL) {
		sum = vn_csum_copy(dst, s->f + s->pay, s->plen, 0);
		fl->psum = psum_add(fl->psum, sum, odd);
	} else {
		sum = vn_csum_copy(dst, s->f + s->pay, s->plen, 0);
		if (!seg_csum_ok(s, sum))
			return -1;
		fl->psum = psum_add(fl->psum, sum, odd);
	}
	fl->len += s->plen;
	return 0;
}

/* Append a candidate that passed merge_check(). */
static int append(struct vn_rsc *r, struct rsc_flow *fl, const struct seg *s, int trusted)
{
	uint8_t *t = fl->buf + fl->l4;

	if (copy_payload(r, fl, s, trusted) < 0)
		return -1;
	if (fl->segs == 1 && s->version == 4)
		fl->ipid_mode = s->ipid == fl->head_ipid ? IPID_FIXED : IPID_INCREMENT;
	fl->segs++;
	fl->ip_len = (uint16_t)(fl->ip_len + s->plen);
	fl->next_seq += s->plen;
	t[13] |= (uint8_t)(s->flags & TCP_PSH);
	if (s->ack != fl->ack || s->window != fl->window) {
		/* rsc mode only: the unit carries the newest ACK and window. */
		fl->ack = s->ack;
		fl->window = s->window;
		vn_put32(t + 8, s->ack);
		vn_put16(t + 14, s->window);
	}
	fl->last_used = ++r->tick;
	r->st.coalesced++;
	return 0;
}

/* Copy @s as the head of a new unit into buffer @bi; -1 if its checksum is bad. */
static int fill_head(struct vn_rsc *r, int16_t bi, const struct seg *s, int trusted,
		     struct rsc_flow *tmp)
{
	memset(tmp, 0, sizeof(*tmp));
	tmp->buf = buf_at(r, bi);
	tmp->buf_idx = bi;
	tmp->l3 = s->l3;
	tmp->l4 = s->l4;
	tmp->pay = s->pay;
	tmp->len = s->pay;
	memcpy(tmp->buf, s->f, s->pay);
	if (copy_payload(r, tmp, s, trusted) < 0)
		return -1;
	tmp->ip_len = s->ip_len;
	tmp->mss = s->plen;
	tmp->segs = 1;
	tmp->head_seq = s->seq;
	tmp->next_seq = s->seq + s->plen;
	tmp->ack = s->ack;
	tmp->window = s->window;
	tmp->head_ipid = s->ipid;
	tmp->version = s->version;
	tmp->partial = s->partial;
	tmp->ipid_mode = IPID_UNKNOWN;
	tmp->hash = s->hash;
	tmp->key_len = s->key_len;
	memcpy(tmp->key, s->key, s->key_len);
	return 0;
}

/* Enter a filled-in unit in the table (a free entry exists). */
static void install_flow(struct vn_rsc *r, const struct rsc_flow *tmp, uint64_t now)
{
	int16_t idx = r->free_flows[--r->n_free_flows];
	struct rsc_flow *fl = &r->flows[idx];
	int16_t *bucket = &r->buckets[tmp->hash & (RSC_BUCKETS - 1)];

	*fl = *tmp;
	/* Saturate: a clock near the end of u64 must not wrap the deadline. */
	fl->deadline = now > UINT64_MAX - r->cfg.interval_ns ? UINT64_MAX
							       : now + r->cfg.interval_ns;
	fl->last_used = ++r->tick;
	fl->next = *bucket;
	*bucket = idx;
	fl->active_pos = (uint8_t)r->n_active;
	r->active[r->n_active++] = idx;
	if (!r->dl_dirty && fl->deadline < r->next_deadline)
		r->next_deadline = fl->deadline;
}

/* @s starts a new unit (delivering @fl's unit, if any, once @s is known good). */
static void start_unit(struct vn_rsc *r, struct outq *q, struct rsc_flow *fl,
		       const struct vn_net_hdr *in_hdr, const struct seg *s, int trusted,
		       uint64_t now)
{
	struct rsc_flow tmp;
	int16_t bi;

	if (s->flags & TCP_PSH) {
		/* A head with PSH is complete already (GRO flushes it at once). */
		if (!seg_verify(s, trusted))
			goto bad;
		r->st.final_psh++;
		if (fl)
			emit_unit(r, q, fl);
		emit_segment(r, q, s);
		return;
	}
	bi = r->free_bufs[--r->n_free_bufs];
	if (fill_head(r, bi, s, trusted, &tmp) < 0) {
		r->free_bufs[r->n_free_bufs++] = bi;
		goto bad;
	}
	if (fl)
		emit_unit(r, q, fl);
	else if (!r->n_free_flows)
		evict_lru(r, q);
	install_flow(r, &tmp, now);
	return;
bad:
	r->st.bypass_bad_csum++;
	emit_frame(r, q, in_hdr, s->f, s->len);
}

/* A segment that goes alone after the flow's unit (FIN, RST, padding ...). */
static void finalize(struct vn_rsc *r, struct outq *q, struct rsc_flow *fl,
		     const struct vn_net_hdr *in_hdr, const struct seg *s, int trusted,
		     uint64_t *why)
{
	if (!seg_verify(s, trusted)) {
		r->st.bypass_bad_csum++;
		emit_frame(r, q, in_hdr, s->f, s->len);
		return;
	}
	(*why)++;
	if (fl)
		emit_unit(r, q, fl);
	emit_segment(r, q, s);
}

/* A segment without payload: count it, absorb a duplicate ACK (rsc mode). */
static void ack_only(struct vn_rsc *r, struct outq *q, struct rsc_flow *fl,
		     const struct vn_net_hdr *in_hdr, const struct seg *s, int trusted)
{
	uint64_t *why = &r->st.pure_acks;

	if (fl && s->ack == fl->ack) {
		if (s->window != fl->window) {
			why = &r->st.window_updates;
		} else {
			why = &r->st.dup_acks;
			if (r->cfg.mode == VN_RSC_MODE_RSC && s->seq == fl->next_seq &&
			    s->flags == TCP_ACK && !header_check(r, fl, s) &&
			    ipid_ok(r, fl, s) && fl->dup_acks < UINT16_MAX &&
			    seg_verify(s, trusted)) {
				r->st.dup_acks++;
				fl->dup_acks++;
				fl->last_used = ++r->tick;
				return;
			}
		}
	}
	finalize(r, q, fl, in_hdr, s, trusted, why);
}

/* Which finalizing flag to count (one per segment). */
static uint64_t *final_reason(struct vn_rsc *r, uint8_t flags)
{
	if (flags & TCP_RST)
		return &r->st.final_rst;
	if (flags & TCP_FIN)
		return &r->st.final_fin;
	if (flags & TCP_URG)
		return &r->st.final_urg;
	if (flags & TCP_CWR)
		return &r->st.final_cwr;
	return &r->st.final_ece;
}

/* One frame: everything it makes deliverable goes to @q (at most 2 entries). */
static void push_one(struct vn_rsc *r, const struct vn_net_hdr *in_hdr, const uint8_t *frame,
		     size_t len, uint64_t now, struct outq *q)
{
	int trusted = in_hdr && (in_hdr->flags & VN_HDR_F_DATA_VALID) ? TRUST_VALID : TRUST_VERIFY;
	int partial = in_hdr && (in_hdr->flags & VN_HDR_F_NEEDS_CSUM);
	struct rsc_flow *fl;
	uint64_t *why = NULL;
	enum verdict v;
	struct seg s;

	r->st.received++;
	if (in_hdr && in_hdr->gso_type != VN_GSO_NONE) {
		r->st.bypass_offloaded++;
		emit_frame(r, q, in_hdr, frame, len);
		return;
	}
	v = parse_seg(r, frame, len, &s, &why);
	if (v == V_BYPASS) {
		(*why)++;
		emit_frame(r, q, in_hdr, frame, len);
		return;
	}
	/* A partial checksum is coalesced only where it is TCP's own field. */
	if (partial && (in_hdr->csum_start != s.l4 || in_hdr->csum_offset != TCP_CHECK_OFF)) {
		r->st.bypass_offloaded++;
		emit_frame(r, q, in_hdr, frame, len);
		return;
	}
	s.partial = (uint8_t)(partial != 0);
	if (partial)
		trusted = TRUST_PARTIAL;
	fl = lookup(r, &s);
	if (fl && fl->deadline <= now) {
		r->st.timer_flushes++;
		emit_unit(r, q, fl);
		fl = NULL;
	}
	if (v == V_BYPASS_FLUSH) {
		(*why)++;
		if (fl)
			emit_unit(r, q, fl);
		emit_frame(r, q, in_hdr, frame, len);
		return;
	}
	if (s.flags & (TCP_FIN | TCP_RST | TCP_URG | TCP_CWR | TCP_ECE)) {
		finalize(r, q, fl, in_hdr, &s, trusted, final_reason(r, s.flags));
		return;
	}
	if (s.plen == 0) {
		ack_only(r, q, fl, in_hdr, &s, trusted);
		return;
	}
	if (s.len > s.ip_end) {
		finalize(r, q, fl, in_hdr, &s, trusted, &r->st.final_padded);
		return;
	}
	if (fl) {
		why = merge_check(r, fl, &s);
		if (!why) {
			if (append(r, fl, &s, trusted) < 0) {
				r->st.bypass_bad_csum++;
				emit_frame(r, q, in_hdr, frame, len);
			} else if (s.flags & TCP_PSH) {
				r->st.final_psh++;
				emit_unit(r, q, fl);
			} else if (s.plen < fl->mss) {
				emit_unit(r, q, fl);
			}
			return;
		}
		(*why)++;
	}
	start_unit(r, q, fl, in_hdr, &s, trusted, now);
}

/* ------------------------------------------------------------------ */
/* API                                                                */
/* ------------------------------------------------------------------ */

/**
 * vn_rsc_new() - create a coalescer; everything it needs is allocated here
 * @cfg: configuration (see struct vn_rsc_cfg)
 * @out: receives the coalescer
 *
 * Return: 0, -EINVAL for a bad configuration, -ENOMEM
 */
int vn_rsc_new(const struct vn_rsc_cfg *cfg, struct vn_rsc **out)
{
	struct vn_rsc *r;
	uint32_t flows, i;

	if (!cfg || !out || cfg->interval_ns == 0 || cfg->max_bytes < VN_RSC_MIN_BYTES ||
	    cfg->max_bytes > VN_RSC_MAX_BYTES || cfg->max_flows > VN_RSC_MAX_FLOWS ||
	    cfg->mode > VN_RSC_MODE_RSC)
		return -EINVAL;
	flows = cfg->max_flows ? cfg->max_flows : VN_RSC_MAX_FLOWS;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->cfg = *cfg;
	r->cfg.max_flows = flows;
	r->buf_size = ((size_t)RSC_L2_MAX + cfg->max_bytes + RSC_BUF_ALIGN - 1) &
		~(size_t)(RSC_BUF_ALIGN - 1);
	r->nbufs = flows + 1;
	if (posix_memalign((void **)&r->pool, RSC_BUF_ALIGN, r->buf_size * r->nbufs)) {
		free(r);
		return -ENOMEM;
	}
	for (i = 0; i < r->nbufs; i++)
		r->free_bufs[i] = (int16_t)(r->nbufs - 1 - i);
	r->n_free_bufs = r->nbufs;
	for (i = 0; i < flows; i++)
		r->free_flows[i] = (int16_t)(flows - 1 - i);
	r->n_free_flows = flows;
	for (i = 0; i < RSC_BUCKETS; i++)
		r->buckets[i] = RSC_NONE;
	r->next_deadline = UINT64_MAX;
	*out = r;
	return 0;
}

/**
 * vn_rsc_free() - free a coalescer and its buffers (held units are dropped)
 * @r: the coalescer, or NULL
 */
void vn_rsc_free(struct vn_rsc *r)
{
	if (!r)
		return;
	free(r->pool);
	free(r);
}

/**
 * vn_rsc_push() - offer one received frame
 * @r: the coalescer
 * @in_hdr: the frame's virtio_net_hdr as the tap gave it, or NULL for none.
 *	DATA_VALID makes the checksums trusted; NEEDS_CSUM at the TCP check field
 *	coalesces as locally made data (a unit of one keeps NEEDS_CSUM); GSO bypasses.
 * @frame: the Ethernet frame
 * @len: its length
 * @now_ns: the current time (any monotonic clock, nanoseconds)
 * @out: receives what must be delivered now, in order
 * @max_out: entries in @out; at least VN_RSC_PUSH_MAX_OUT
 *
 * An output's data points into @frame (kinds BYPASS and SEGMENT) or into the
 * coalescer (UNIT), valid until the next call into the coalescer.
 *
 * Return: number of outputs (0..2), -EINVAL, or -ENOSPC when @max_out is short
 */
int vn_rsc_push(struct vn_rsc *r, const struct vn_net_hdr *in_hdr, const uint8_t *frame,
		size_t len, uint64_t now_ns, struct vn_rsc_out *out, uint32_t max_out)
{
	struct outq q = { .o = out, .cap = max_out };

	if (!r || !out || (!frame && len))
		return -EINVAL;
	if (max_out < VN_RSC_PUSH_MAX_OUT)
		return -ENOSPC;
	release_inflight(r);
	push_one(r, in_hdr, frame ? frame : (const uint8_t *)"", len, now_ns, &q);
	return (int)q.n;
}

/* Deliver up to @q's room of units, earliest deadline first, while they are
 * due at @now (all of them when @all). */
static void deliver_due(struct vn_rsc *r, struct outq *q, uint64_t now, int all,
			uint64_t *counter)
{
	while (q->n < q->cap && r->n_active) {
		struct rsc_flow *best = NULL;
		uint32_t i;

		for (i = 0; i < r->n_active; i++) {
			struct rsc_flow *fl = &r->flows[r->active[i]];

			if (!best || fl->deadline < best->deadline ||
			    (fl->deadline == best->deadline && fl->last_used < best->last_used))
				best = fl;
		}
		if (!all && best->deadline > now)
			break;
		(*counter)++;
		emit_unit(r, q, best);
	}
}

/**
 * vn_rsc_poll() - deliver the units whose interval has run out
 * @r: the coalescer
 * @now_ns: the current time
 * @out: receives the units, earliest deadline first
 * @max_out: entries in @out; call again while vn_rsc_deadline() <= now
 *
 * Return: number of outputs, or -EINVAL
 */
int vn_rsc_poll(struct vn_rsc *r, uint64_t now_ns, struct vn_rsc_out *out, uint32_t max_out)
{
	struct outq q = { .o = out, .cap = max_out };

	if (!r || (!out && max_out))
		return -EINVAL;
	release_inflight(r);
	if (earliest_deadline(r) <= now_ns)
		deliver_due(r, &q, now_ns, 0, &r->st.timer_flushes);
	return (int)q.n;
}

/**
 * vn_rsc_flush() - deliver every held unit (device reset, feature change)
 * @r: the coalescer
 * @out: receives the units, earliest deadline first
 * @max_out: entries in @out; call again until it returns 0
 *
 * Return: number of outputs, or -EINVAL
 */
int vn_rsc_flush(struct vn_rsc *r, struct vn_rsc_out *out, uint32_t max_out)
{
	struct outq q = { .o = out, .cap = max_out };

	if (!r || (!out && max_out))
		return -EINVAL;
	release_inflight(r);
	deliver_due(r, &q, 0, 1, &r->st.drained);
	return (int)q.n;
}

/**
 * vn_rsc_deadline() - when the next held unit is due
 * @r: the coalescer
 * @deadline_ns: receives the earliest deadline when there is one
 *
 * Return: 1 with @deadline_ns set, 0 when nothing is held
 */
int vn_rsc_deadline(const struct vn_rsc *r, uint64_t *deadline_ns)
{
	uint64_t best = UINT64_MAX;
	uint32_t i;

	if (!r || !r->n_active)
		return 0;
	for (i = 0; i < r->n_active; i++) {
		uint64_t d = r->flows[r->active[i]].deadline;

		if (d < best)
			best = d;
	}
	if (deadline_ns)
		*deadline_ns = best;
	return 1;
}

/**
 * vn_rsc_held() - number of units held
 * @r: the coalescer
 *
 * Return: held units (flows in the table)
 */
uint32_t vn_rsc_held(const struct vn_rsc *r)
{
	return r ? r->n_active : 0;
}

/**
 * vn_rsc_get_stats() - copy the counters
 * @r: the coalescer
 * @st: receives them
 */
void vn_rsc_get_stats(const struct vn_rsc *r, struct vn_rsc_stats *st)
{
	if (r && st)
		*st = r->st;
}

/* Copy the outputs @from.. of a batch into the arena; false when it is full. */
static size_t copy_outputs(struct vn_rsc_out *o, uint32_t from, uint32_t to, uint8_t *arena,
			   size_t used)
{
	uint32_t i;

	for (i = from; i < to; i++) {
		memcpy(arena + used, o[i].data, o[i].len);
		o[i].data = arena + used;
		used += o[i].len;
	}
	return used;
}

/**
 * vn_rsc_push_batch() - vn_rsc_push() over many frames in one call
 * @r: the coalescer
 * @in: the frames, each with its time and optional input header
 * @n: number of frames
 * @out: receives every output, in order
 * @max_out: entries in @out
 * @arena: where every output's bytes are copied (so they stay valid), or
 *	NULL to leave data pointers as vn_rsc_push() would (only the last
 *	frame's outputs are then safe to read)
 * @arena_cap: its size
 * @consumed: receives the number of frames processed
 *
 * Before each frame, units due at its time are delivered, as if
 * vn_rsc_poll(now_ns) ran first.  Processing stops early, with *@consumed < @n,
 * when @out or @arena might not hold the next frame's outputs.
 *
 * Return: number of outputs, or -EINVAL
 */
int vn_rsc_push_batch(struct vn_rsc *r, const struct vn_rsc_batch_in *in, uint32_t n,
		      struct vn_rsc_out *out, uint32_t max_out, uint8_t *arena,
		      size_t arena_cap, uint32_t *consumed)
{
	struct outq q = { .o = out, .cap = max_out };
	size_t used = 0;
	uint32_t i;

	if (!r || !consumed || (!in && n) || (!out && max_out))
		return -EINVAL;
	for (i = 0; i < n; i++) {
		const struct vn_rsc_batch_in *e = &in[i];
		uint32_t worst = r->n_active + VN_RSC_PUSH_MAX_OUT, first = q.n;

		if (q.cap - q.n < worst)
			break;
		if (arena && arena_cap - used < (size_t)worst * r->buf_size + e->len)
			break;
		if (!e->frame && e->len)
			return -EINVAL;
		release_inflight(r);
		if (earliest_deadline(r) <= e->now_ns)
			deliver_due(r, &q, e->now_ns, 0, &r->st.timer_flushes);
		push_one(r, e->has_hdr ? &e->hdr : NULL, e->frame ? e->frame : (const uint8_t *)"",
			 e->len, e->now_ns, &q);
		if (arena)
			used = copy_outputs(out, first, q.n, arena, used);
	}
	*consumed = i;
	return (int)q.n;
}
