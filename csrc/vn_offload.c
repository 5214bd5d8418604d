/*
 * vn_offload.c - validate virtio_net_hdr, complete checksums, software GSO.
 *
 * Theory of operation
 *
 * What the guest writes is what a Linux tap with IFF_VNET_HDR would be handed,
 * so the rules here are the kernel's (tun_vnet_hdr_get, virtio_net_hdr_to_skb,
 * tcp_gso_segment, __udp_gso_segment, udp4/6 UFO and inet/ipv6_gso_segment),
 * re-derived and written for this project, with these deliberate extra
 * refusals.  The kernel accepts each of these writes; what it then does is
 * shown, one example each, by tests/oracle/test_oracle_validate.py:
 *   - GSO without NEEDS_CSUM (every virtio driver sets it with GSO; the kernel
 *     checksums and segments it itself);
 *   - csum_start not exactly at the parsed TCP/UDP header, or csum_offset not
 *     the protocol's checksum field, for GSO (TSO/USO: dropped when segmented;
 *     UFO ignores both);
 *   - ECN on a UDP gso_type (the kernel refuses it with USO, ignores it with
 *     UFO); UFO with a gso_size below the UDP header size (split that small);
 *   - TCP GSO whose payload does not exceed gso_size once TCP options are
 *     counted (the kernel marks it GSO by a 20-byte header, then its TCP
 *     segmentation refuses it and the packet is dropped);
 *   - GSO on a frame that is not the IP version and transport protocol the
 *     gso_type names, is an IP fragment, or has more VLAN tags or IPv6
 *     extension headers than vn_parse walks (VN_MAX_VLAN_TAGS,
 *     VN_MAX_IPV6_EXT): the kernel drops most of these when it segments, but
 *     does segment IPv4 fragments and deeper stacks (7 tags, 12 extension
 *     headers seen);
 *   - hdr_len past the end of the frame: the kernel compares hdr_len with the
 *     bytes left after the first 10 header bytes, so with a 12-byte header it
 *     lets hdr_len run 2 bytes past the frame;
 *   - frames longer than VN_MAX_FRAME (a tap takes any length).
 *
 * Checksums of segments are derived the kernel's way: the guest's check field
 * holds the pseudo-header sum over the full L4 length; each segment adjusts it
 * by the length difference (TCP: actual length; USO: the guest's UDP length
 * field) and adds its own header and payload.  UFO instead computes the UDP
 * checksum of the whole datagram from the IP addresses before fragmenting.
 * A TSO segment's computed zero stays 0x0000; plain completion, USO and UFO
 * send a zero as 0xffff (what the kernel does, measured).
 *
 * Output is either copied into a caller arena (payload copied and summed in
 * one pass) or described as iovecs: a header in the arena plus the payload in
 * the caller's frame, summed but not copied.  Nothing is allocated.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "vn_csum.h"
#include "vn_offload.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_CWR 0x80
#define IPV4_MF 0x2000
#define IPV6_MF 0x0001
#define TCP_CHECK_OFF 16
#define UDP_CHECK_OFF 6

enum gso_kind { KIND_TCP, KIND_USO, KIND_UFO };

/* One's complement 16-bit arithmetic on memory-order values (csum16_add). */
static inline uint16_t csum16_add(uint16_t a, uint16_t b)
{
	uint16_t r = (uint16_t)(a + b);

	return (uint16_t)(r + (r < b));
}

static inline uint16_t csum16_sub(uint16_t a, uint16_t b)
{
	return csum16_add(a, (uint16_t)~b);
}

/* The finished field value: inverted fold, with zero sent as 0xffff if asked. */
static inline uint16_t csum_final(uint32_t sum, int mangle_zero)
{
	uint16_t c = (uint16_t)~vn_csum_fold(sum);

	return (c == 0 && mangle_zero) ? 0xffff : c;
}

/* Pseudo-header sum (memory order) for an L4 length and protocol. */
static uint32_t pseudo_sum(const uint8_t *f, const struct vn_pkt *pkt, uint32_t l4len,
			   uint8_t proto)
{
	uint32_t s;

	if (pkt->ip_version == 4)
		s = vn_csum_partial(f + pkt->l3_off + 12, 8, 0);
	else
		s = vn_csum_partial(f + pkt->l3_off + 8, 32, 0);
	s = vn_csum_add(s, htons(proto));
	s = vn_csum_add(s, htons((uint16_t)(l4len & 0xffff)));
	return vn_csum_add(s, htons((uint16_t)(l4len >> 16)));
}

/**
 * vn_validate_head() - vn_validate() when only the frame's first bytes are at hand
 * @h: the header (host byte order)
 * @head: the first @head_len bytes of the frame (its protocol headers)
 * @head_len: bytes in @head, at most @len
 * @len: the whole frame's length
 * @pkt: receives the parsed header offsets; may be NULL
 *
 * For frames scattered over guest buffers: the headers are copied into
 * @head, lengths are checked against @len.  Protocol headers reaching past
 * @head_len count as missing (a GSO frame is then refused as VN_BAD_L3/L4).
 *
 * Return: 0 when the pair is acceptable, -enum vn_bad otherwise
 */
int vn_validate_head(const struct vn_net_hdr *h, const uint8_t *head, size_t head_len,
		     size_t len, struct vn_pkt *pkt)
{
	struct vn_pkt local;
	unsigned int base = h->gso_type & ~(unsigned int)VN_GSO_ECN;
	size_t thlen = 0, nh_min = VN_IPV4_HLEN, hdr_len = h->hdr_len;
	uint8_t proto = 0, want_ip = 0;
	int parsed;

	if (!pkt)
		pkt = &local;
	memset(pkt, 0, sizeof(*pkt));
	if (len < VN_ETH_HLEN)
		return -VN_BAD_FRAME_SHORT;
	if (len > VN_MAX_FRAME)
		return -VN_BAD_FRAME_LONG;

	if (h->gso_type != VN_GSO_NONE) {
		switch (base) {
		case VN_GSO_TCPV4:
			proto = VN_IPPROTO_TCP, thlen = VN_TCP_HLEN, want_ip = 4;
			break;
		case VN_GSO_TCPV6:
			proto = VN_IPPROTO_TCP, thlen = VN_TCP_HLEN, want_ip = 6;
			nh_min = VN_IPV6_HLEN;
			break;
		case VN_GSO_UDP:
		case VN_GSO_UDP_L4:
			proto = VN_IPPROTO_UDP, thlen = VN_UDP_HLEN;
			break;
		default:
			return -VN_BAD_GSO_TYPE;
		}
		if ((h->gso_type & VN_GSO_ECN) && proto == VN_IPPROTO_UDP)
			return -VN_BAD_GSO_TYPE;
		if (h->gso_size == 0 || h->gso_size == VN_GSO_BY_FRAGS)
			return -VN_BAD_GSO_SIZE;
		if (base == VN_GSO_UDP && h->gso_size < VN_UDP_HLEN)
			return -VN_BAD_GSO_SIZE;
		if (!(h->flags & VN_HDR_F_NEEDS_CSUM))
			return -VN_BAD_GSO_NO_CSUM;
	}

	if (h->flags & VN_HDR_F_NEEDS_CSUM) {
		size_t start = h->csum_start, off = h->csum_offset;
		size_t field_end = start + off + 2;

		if (field_end > hdr_len)
			hdr_len = field_end;
		if (start < nh_min || start > len)
			return -VN_BAD_CSUM_START;
		if (field_end > len)
			return -VN_BAD_CSUM_OFFSET;
		if (start + thlen > len)
			return -VN_BAD_CSUM_START;
	}
	if (hdr_len > len || (hdr_len > 0 && hdr_len < VN_ETH_HLEN))
		return -VN_BAD_HDR_LEN;

	if (head_len > len)
		head_len = len;
	parsed = vn_parse(head, head_len, pkt);
	if (h->gso_type == VN_GSO_NONE)
		return 0;

	if (parsed < 0 || pkt->ip_version == 0 || (want_ip && pkt->ip_version != want_ip) ||
	    pkt->is_fragment)
		return -VN_BAD_L3;
	if (pkt->l4_proto != proto || pkt->l4_off == 0)
		return -VN_BAD_L4;
	if (h->csum_start != pkt->l4_off)
		return -VN_BAD_CSUM_START;
	if (h->csum_offset != (proto == VN_IPPROTO_TCP ? TCP_CHECK_OFF : UDP_CHECK_OFF))
		return -VN_BAD_CSUM_OFFSET;
	if (base == VN_GSO_UDP_L4 &&
	    len - pkt->l4_off - VN_UDP_HLEN > (size_t)h->gso_size * VN_USO_MAX_SEGS)
		return -VN_BAD_USO_SEGS;
	/* Marked GSO by the kernel's 20-byte rule but not segmentable: dropped there. */
	if (base != VN_GSO_UDP && len - pkt->l4_off - thlen > h->gso_size &&
	    len - pkt->l4_off - pkt->l4_hlen <= h->gso_size)
		return -VN_BAD_GSO_SIZE;
	return 0;
}

/**
 * vn_validate() - check a virtio_net_hdr against its frame, as a tap would
 * @h: the header (host byte order)
 * @frame: the Ethernet frame that follows it
 * @len: frame length
 * @pkt: receives the parsed header offsets; may be NULL
 *
 * Return: 0 when the pair is acceptable, -enum vn_bad otherwise
 */
int vn_validate(const struct vn_net_hdr *h, const uint8_t *frame, size_t len,
		struct vn_pkt *pkt)
{
	return vn_validate_head(h, frame, len, len, pkt);
}

/**
 * vn_gso_needed() - does a validated GSO frame split into more than one packet
 * @h: the validated header
 * @pkt: its parse from vn_validate()
 * @len: frame length
 *
 * Return: 1 when it must be segmented, 0 when it goes out as one packet
 */
int vn_gso_needed(const struct vn_net_hdr *h, const struct vn_pkt *pkt, size_t len)
{
	unsigned int base = h->gso_type & ~(unsigned int)VN_GSO_ECN;

	if (h->gso_type == VN_GSO_NONE)
		return 0;
	if (base == VN_GSO_UDP)
		return len - pkt->l4_off > h->gso_size;
	return len - pkt->l4_off - pkt->l4_hlen > h->gso_size;
}

static void complete_in_place(const struct vn_net_hdr *h, uint8_t *frame, size_t len)
{
	size_t start = h->csum_start;
	uint32_t sum = vn_csum_partial(frame + start, len - start, 0);

	vn_store16(frame + start + h->csum_offset, csum_final(sum, 1));
}

/**
 * vn_complete_csum() - fill in the checksum a NEEDS_CSUM header asks for
 * @h: the header
 * @frame: the frame, modified in place
 * @len: frame length
 *
 * Sums from csum_start to the end of the frame, as the kernel's
 * skb_checksum_help does, and stores the result at csum_start + csum_offset.
 * Without NEEDS_CSUM the frame is left alone.
 *
 * Return: 0, or -enum vn_bad when the header is invalid
 */
int vn_complete_csum(const struct vn_net_hdr *h, uint8_t *frame, size_t len)
{
	int rc = vn_validate(h, frame, len, NULL);

	if (rc)
		return rc;
	if (h->flags & VN_HDR_F_NEEDS_CSUM)
		complete_in_place(h, frame, len);
	return 0;
}

/* Where segments go: copied into an arena, or headers in the arena + iovecs. */
struct seg_out {
	uint8_t *arena;
	size_t cap, used;
	uint32_t *lens;         /* copy mode */
	struct iovec *iov;      /* iov mode: two per segment */
	uint32_t max_segs;
};

static uint8_t *out_take(struct seg_out *o, size_t n)
{
	uint8_t *p;

	if (n > o->cap - o->used)
		return NULL;
	p = o->arena + o->used;
	o->used += n;
	return p;
}

/* Everything about a super-packet that stays the same across its segments. */
struct gso_plan {
	const struct vn_net_hdr *h;
	const uint8_t *f;
	size_t len;
	struct vn_pkt pkt;
	enum gso_kind kind;
	size_t hlen;            /* bytes copied from the frame into each header */
	size_t l4_out;          /* L4 header offset in an output segment */
	size_t pay_off, pay_len, mss;
	uint32_t nsegs;
	uint32_t v6_frag_id;
	uint16_t ufo_check;     /* UFO: the whole datagram's UDP checksum */
	/* Sums of the header words no segment changes (IPv4: all but tot_len,
	 * id, frag_off and check; TCP: all but seq, offset/flags and check;
	 * USO: the ports).  Each segment adds its own values to them instead of
	 * re-reading the header it has just written: those loads would wait for
	 * the narrow stores (a store-forwarding stall, measured as about a fifth
	 * of the time per segment). */
	uint32_t ip_sum, l4_sum;
};

/* Copy the frame's headers into a segment header, adding an IPv6 fragment
 * header at the end of the unfragmentable part for UFO over IPv6. */
static void build_header(const struct gso_plan *g, uint8_t *dst)
{
	size_t ins = g->pkt.v6_frag_ins;

	if (g->kind != KIND_UFO || g->pkt.ip_version != 6) {
		memcpy(dst, g->f, g->hlen);
		return;
	}
	memcpy(dst, g->f, ins);
	dst[ins] = g->f[g->pkt.v6_prevhdr];
	dst[ins + 1] = 0;
	vn_store16(dst + ins + 2, 0);
	vn_put32(dst + ins + 4, g->v6_frag_id);
	memcpy(dst + ins + VN_IPV6_FRAG_HLEN, g->f + ins, g->hlen - ins);
	dst[g->pkt.v6_prevhdr] = VN_IPPROTO_FRAGMENT;
}

/* Fix the IP header of segment @i carrying @n payload bytes; @hdr_bytes is the
 * segment's header length.  @frag_off is UFO's running byte offset. */
static void fix_ip(const struct gso_plan *g, uint8_t *hdr, size_t hdr_bytes, uint32_t i,
		   size_t n, size_t *frag_off)
{
	uint8_t *ip = hdr + g->pkt.l3_off;
	int last = i + 1 == g->nsegs;

	if (g->pkt.ip_version == 4) {
		const uint8_t *ip_in = g->f + g->pkt.l3_off;
		uint16_t tot = (uint16_t)(hdr_bytes - g->pkt.l3_off + n);
		uint16_t id = vn_get16(ip_in + 4), frag = vn_get16(ip_in + 6);
		uint32_t sum;

		if (g->kind == KIND_UFO) {
			frag = (uint16_t)((*frag_off >> 3) | (last ? 0 : IPV4_MF));
			*frag_off += tot - (size_t)(ip_in[0] & 0x0f) * 4;
		} else {
			id = (uint16_t)(id + i);
		}
		vn_put16(ip + 2, tot);
		vn_put16(ip + 4, id);
		vn_put16(ip + 6, frag);
		sum = vn_csum_add(g->ip_sum, htons(tot));
		sum = vn_csum_add(sum, htons(id));
		sum = vn_csum_add(sum, htons(frag));
		vn_store16(ip + 10, csum_final(sum, 0));
		return;
	}
	{
		size_t plen = hdr_bytes - g->pkt.l3_off - VN_IPV6_HLEN + n;

		vn_put16(ip + 4, (uint16_t)plen);
		if (g->kind == KIND_UFO) {
			uint8_t *frag = hdr + g->pkt.v6_frag_ins;

			/* The kernel advances by payload_len minus the fragment
			 * header, which counts unfragmentable extension headers
			 * too; mirrored so the output matches it byte for byte. */
			vn_put16(frag + 2, (uint16_t)(*frag_off | (last ? 0 : IPV6_MF)));
			*frag_off += plen - VN_IPV6_FRAG_HLEN;
		}
	}
}

/* Prepare the L4 header of segment @i for its payload; return the sum of
 * the L4 header bytes as they will be checksummed. */
static uint32_t fix_l4(const struct gso_plan *g, uint8_t *hdr, size_t hdr_bytes,
		       uint32_t i, size_t n)
{
	uint8_t *l4 = hdr + g->l4_out;
	const uint8_t *l4_in = g->f + g->pkt.l4_off;
	int last = i + 1 == g->nsegs;

	if (g->kind == KIND_TCP) {
		uint16_t full = (uint16_t)(g->len - g->pkt.l4_off);
		uint16_t seglen = (uint16_t)(g->pkt.l4_hlen + n);
		uint32_t seed = vn_load16(l4_in + TCP_CHECK_OFF);
		uint32_t seq = vn_get32(l4_in + 4) + (uint32_t)(i * g->mss);
		uint8_t flags = l4_in[13];
		uint16_t check;

		if (!last)
			flags &= (uint8_t)~(TCP_FLAG_FIN | TCP_FLAG_PSH);
		if (i > 0)
			flags &= (uint8_t)~TCP_FLAG_CWR;
		vn_put32(l4 + 4, seq);
		l4[13] = flags;
		seed = vn_csum_add(seed, htons((uint16_t)~full));
		seed = vn_csum_add(seed, htons(seglen));
		check = vn_csum_fold(seed);
		vn_store16(l4 + TCP_CHECK_OFF, check);
		seed = vn_csum_add(g->l4_sum, htonl(seq));
		seed = vn_csum_add(seed, htons((uint16_t)(l4_in[12] << 8 | flags)));
		return vn_csum_add(seed, check);
	}
	if (g->kind == KIND_USO) {
		uint16_t newlen = htons((uint16_t)(VN_UDP_HLEN + n));
		uint16_t check = csum16_add(csum16_sub(vn_load16(l4_in + UDP_CHECK_OFF),
						       vn_load16(l4_in + 4)), newlen);

		vn_store16(l4 + 4, newlen);
		vn_store16(l4 + UDP_CHECK_OFF, check);
		return vn_csum_add(vn_csum_add(g->l4_sum, newlen), check);
	}
	/* UFO: the first fragment carries the UDP header with the full checksum. */
	if (i == 0 && hdr_bytes > g->l4_out) {
		memcpy(l4, l4_in, VN_UDP_HLEN);
		vn_store16(l4 + UDP_CHECK_OFF, g->ufo_check);
	}
	return 0;
}

static int plan_gso(struct gso_plan *g)
{
	unsigned int base = g->h->gso_type & ~(unsigned int)VN_GSO_ECN;
	const struct vn_pkt *p = &g->pkt;
	const uint8_t *ip = g->f + p->l3_off, *l4 = g->f + p->l4_off;

	g->mss = g->h->gso_size;
	g->l4_out = p->l4_off;
	if (p->ip_version == 4) {
		uint32_t s = vn_csum_partial(ip, 2, 0);                  /* version, tos */

		s = vn_csum_partial(ip + 8, 2, s);                       /* ttl, protocol */
		g->ip_sum = vn_csum_partial(ip + 12, (size_t)(ip[0] & 0x0f) * 4 - 12, s);
	}
	if (base == VN_GSO_UDP_L4) {
		g->l4_sum = vn_csum_partial(l4, 4, 0);                   /* ports */
	} else if (base != VN_GSO_UDP) {
		uint32_t s = vn_csum_partial(l4, 4, 0);                  /* ports */

		s = vn_csum_partial(l4 + 8, 4, s);                       /* ack */
		s = vn_csum_partial(l4 + 14, 2, s);                      /* window */
		g->l4_sum = vn_csum_partial(l4 + 18, (size_t)p->l4_hlen - 18, s);
	}
	if (base == VN_GSO_UDP) {
		uint32_t l4len = (uint32_t)(g->len - p->l4_off);
		uint32_t sum = pseudo_sum(g->f, p, l4len, VN_IPPROTO_UDP);

		g->kind = KIND_UFO;
		g->hlen = p->l4_off;
		g->pay_off = p->l4_off;       /* the UDP header is fragment data */
		/* Sum the datagram with its check field taken as zero. */
		sum = vn_csum_partial(g->f + p->l4_off, UDP_CHECK_OFF, sum);
		sum = vn_csum_partial(g->f + p->l4_off + VN_UDP_HLEN, l4len - VN_UDP_HLEN, sum);
		g->ufo_check = csum_final(sum, 1);
		if (p->ip_version == 6)
			g->l4_out += VN_IPV6_FRAG_HLEN;
	} else {
		g->kind = base == VN_GSO_UDP_L4 ? KIND_USO : KIND_TCP;
		g->hlen = (size_t)p->l4_off + p->l4_hlen;
		g->pay_off = g->hlen;
	}
	g->pay_len = g->len - g->pay_off;
	g->nsegs = (uint32_t)((g->pay_len + g->mss - 1) / g->mss);
	return 0;
}

/* Produce every segment of a planned super-packet into @o. */
static int emit_segments(struct gso_plan *g, struct seg_out *o)
{
	size_t hdr_base = g->l4_out - g->pkt.l4_off + g->hlen;   /* + IPv6 frag hdr */
	size_t frag_off = 0, pos = g->pay_off;
	int mangle_zero = g->kind != KIND_TCP;
	uint32_t i;

	if (g->nsegs > o->max_segs)
		return -VN_BAD_NO_SPACE;
	for (i = 0; i < g->nsegs; i++) {
		size_t n = g->pay_len - (pos - g->pay_off);
		size_t hdr_bytes = hdr_base, src_n;
		uint32_t sum;
		uint8_t *hdr;

		if (n > g->mss)
			n = g->mss;
		/* UFO's first fragment: its UDP header rides in the segment header. */
		if (g->kind == KIND_UFO && i == 0)
			hdr_bytes += VN_UDP_HLEN;
		src_n = n - (hdr_bytes - hdr_base);
		hdr = out_take(o, hdr_bytes);
		if (!hdr)
			return -VN_BAD_NO_SPACE;
		build_header(g, hdr);
		fix_ip(g, hdr, hdr_base, i, n, &frag_off);
		sum = fix_l4(g, hdr, hdr_bytes, i, n);
		pos += hdr_bytes - hdr_base;
		if (o->iov) {
			if (g->kind != KIND_UFO)
				sum = vn_csum_partial(g->f + pos, src_n, sum);
			o->iov[2 * i].iov_base = hdr;
			o->iov[2 * i].iov_len = hdr_bytes;
			o->iov[2 * i + 1].iov_base = (void *)(uintptr_t)(g->f + pos);
			o->iov[2 * i + 1].iov_len = src_n;
		} else {
			uint8_t *dst = out_take(o, src_n);

			if (!dst)
				return -VN_BAD_NO_SPACE;
			if (g->kind != KIND_UFO)
				sum = vn_csum_copy(dst, g->f + pos, src_n, sum);
			else
				memcpy(dst, g->f + pos, src_n);
			o->lens[i] = (uint32_t)(hdr_bytes + src_n);
		}
		pos += src_n;
		if (g->kind != KIND_UFO) {
			size_t field = g->l4_out +
				(g->kind == KIND_TCP ? TCP_CHECK_OFF : UDP_CHECK_OFF);

			vn_store16(hdr + field, csum_final(sum, mangle_zero));
		}
	}
	return (int)g->nsegs;
}

/* A frame that leaves as one packet: header part patched in the arena. */
static int emit_single(const struct vn_net_hdr *h, const uint8_t *f, size_t len,
		       struct seg_out *o)
{
	int csum = (h->flags & VN_HDR_F_NEEDS_CSUM) != 0;
	size_t head = csum ? (size_t)h->csum_start + h->csum_offset + 2 : 0;
	uint8_t *dst;

	if (o->max_segs < 1)
		return -VN_BAD_NO_SPACE;
	if (!o->iov)
		head = len;
	dst = out_take(o, head);
	if (!dst)
		return -VN_BAD_NO_SPACE;
	memcpy(dst, f, head);
	if (csum) {
		/* Summed with the field as the guest left it, as the kernel does. */
		uint32_t sum = vn_csum_partial(f + h->csum_start, len - h->csum_start, 0);

		vn_store16(dst + h->csum_start + h->csum_offset, csum_final(sum, 1));
	}
	if (o->iov) {
		o->iov[0].iov_base = dst;
		o->iov[0].iov_len = head;
		o->iov[1].iov_base = (void *)(uintptr_t)(f + head);
		o->iov[1].iov_len = len - head;
	} else {
		o->lens[0] = (uint32_t)len;
	}
	return 1;
}

static int segment_into(const struct vn_net_hdr *h, const uint8_t *frame, size_t len,
			uint32_t v6_frag_id, struct seg_out *o)
{
	struct gso_plan g;
	int rc;

	memset(&g, 0, sizeof(g));
	rc = vn_validate(h, frame, len, &g.pkt);
	if (rc)
		return rc;
	if (!vn_gso_needed(h, &g.pkt, len))
		return emit_single(h, frame, len, o);
	g.h = h;
	g.f = frame;
	g.len = len;
	g.v6_frag_id = v6_frag_id;
	plan_gso(&g);
	return emit_segments(&g, o);
}

/**
 * vn_segment() - validate, then segment or checksum a frame into an arena
 * @h: the virtio_net_hdr (host byte order)
 * @frame: the frame
 * @len: frame length
 * @v6_frag_id: identification for IPv6 UFO fragment headers
 * @out: arena; segments are laid out back to back
 * @out_cap: arena size
 * @seg_lens: receives each segment's length
 * @max_segs: entries in @seg_lens
 *
 * A frame that does not need segmenting comes out as one segment, with its
 * checksum completed when NEEDS_CSUM is set.
 *
 * Return: number of segments, or -enum vn_bad
 */
int vn_segment(const struct vn_net_hdr *h, const uint8_t *frame, size_t len,
	       uint32_t v6_frag_id, uint8_t *out, size_t out_cap,
	       uint32_t *seg_lens, uint32_t max_segs)
{
	struct seg_out o = { .arena = out, .cap = out_cap, .lens = seg_lens,
			     .max_segs = max_segs };

	return segment_into(h, frame, len, v6_frag_id, &o);
}

/**
 * vn_segment_iov() - like vn_segment(), but leave payloads where they are
 * @h: the virtio_net_hdr (host byte order)
 * @frame: the frame; must stay valid while the iovecs are used
 * @len: frame length
 * @v6_frag_id: identification for IPv6 UFO fragment headers
 * @hdr_arena: where the rewritten headers go
 * @arena_cap: its size
 * @iov: receives two iovecs per segment: header, then payload
 * @max_segs: segments @iov has room for (it holds 2 * @max_segs entries)
 *
 * Return: number of segments, or -enum vn_bad
 */
int vn_segment_iov(const struct vn_net_hdr *h, const uint8_t *frame, size_t len,
		   uint32_t v6_frag_id, uint8_t *hdr_arena, size_t arena_cap,
		   struct iovec *iov, uint32_t max_segs)
{
	struct seg_out o = { .arena = hdr_arena, .cap = arena_cap, .iov = iov,
			     .max_segs = max_segs };

	return segment_into(h, frame, len, v6_frag_id, &o);
}

/**
 * vn_fix_batch() - vn_segment() over a batch of frames into one arena
 * @ents: the frames; each gets its result and the index of its first segment
 * @n: number of frames
 * @v6_frag_id: first IPv6 fragment identification; incremented per frame
 * @out: arena shared by the batch
 * @out_cap: its size
 * @seg_lens: lengths of all segments, in order
 * @max_segs: entries in @seg_lens
 *
 * A frame that fails leaves nothing in the arena and does not stop the batch.
 *
 * Return: total number of segments written
 */
int vn_fix_batch(struct vn_batch_ent *ents, uint32_t n, uint32_t v6_frag_id,
		 uint8_t *out, size_t out_cap, uint32_t *seg_lens, uint32_t max_segs)
{
	size_t used = 0;
	uint32_t segs = 0, i;

	for (i = 0; i < n; i++) {
		struct vn_batch_ent *e = &ents[i];
		struct seg_out o = { .arena = out + used, .cap = out_cap - used,
				     .lens = seg_lens + segs, .max_segs = max_segs - segs };
		int rc = segment_into(&e->hdr, e->frame, e->len, v6_frag_id + i, &o);

		e->first_seg = segs;
		e->result = rc;
		if (rc > 0) {
			used += o.used;
			segs += (uint32_t)rc;
		}
	}
	return (int)segs;
}

/**
 * vn_verify() - are a frame's IPv4 header and TCP/UDP checksums correct
 * @frame: the frame
 * @len: its length
 *
 * The L4 length comes from the IP header (Ethernet padding is ignored).  An
 * IPv4 UDP checksum of zero means "none" and passes; over IPv6 it fails.
 *
 * Return: 1 when everything checks, 0 when something does not or the frame
 * is not unfragmented TCP/UDP over IP
 */
int vn_verify(const uint8_t *frame, size_t len)
{
	struct vn_pkt pkt;
	const uint8_t *ip, *l4;
	size_t ip_end, l4len;
	uint32_t sum;

	if (vn_parse(frame, len, &pkt) < 0 || pkt.l4_off == 0)
		return 0;
	ip = frame + pkt.l3_off;
	l4 = frame + pkt.l4_off;
	if (pkt.ip_version == 4) {
		size_t ihl = (size_t)(ip[0] & 0x0f) * 4;

		if (vn_csum_fold(vn_csum_partial(ip, ihl, 0)) != 0xffff)
			return 0;
		ip_end = pkt.l3_off + (size_t)vn_get16(ip + 2);
	} else {
		ip_end = pkt.l3_off + VN_IPV6_HLEN + (size_t)vn_get16(ip + 4);
	}
	if (ip_end > len || ip_end < (size_t)pkt.l4_off + pkt.l4_hlen)
		return 0;
	l4len = ip_end - pkt.l4_off;
	if (pkt.l4_proto == VN_IPPROTO_UDP) {
		size_t ulen = vn_get16(l4 + 4);

		if (ulen < VN_UDP_HLEN || ulen > l4len)
			return 0;
		if (vn_load16(l4 + UDP_CHECK_OFF) == 0)
			return pkt.ip_version == 4;
		l4len = ulen;
	}
	sum = pseudo_sum(frame, &pkt, (uint32_t)l4len, pkt.l4_proto);
	sum = vn_csum_partial(l4, l4len, sum);
	return vn_csum_fold(sum) == 0xffff;
}
