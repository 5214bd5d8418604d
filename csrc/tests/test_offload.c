/*
 * test_offload.c - standalone tests of the C offload engine (no Python).
 *
 * Theory of operation
 *
 * Built by `make run-regress-ctest` (-O2) and `make asan` (ASan + UBSan) with
 * every C file under csrc/.  Four parts:
 *   1. known answers: RFC 1071's example, fixed IPv4/TCP and IPv6/UDP frames
 *      whose checksums were computed by an independent implementation, and
 *      vn_csum_partial/vn_csum_copy against a byte-at-a-time reference sum
 *      over every alignment and across the SSE2 lane-drain boundary;
 *   2. segmentation of TCPv4/TCPv6/USO/UFO super-packets, each segment checked
 *      with vn_verify and with the reference sum, payloads reassembled;
 *   3. vn_validate at the edge of every limit;
 *   4. a deterministic fuzz loop (xorshift64*, fixed seed): random headers
 *      biased to edge values over random bytes and over valid frames with a
 *      few bytes mutated, cut or added, fed to every entry point.  Every
 *      buffer handed to the engine is a heap block of exactly the size passed
 *      (frames, arenas, segment tables, iovecs), so ASan reports any access
 *      past it; arenas and tables are also given exactly what a call needs,
 *      then one byte or one entry less, which must fail with NO_SPACE, and
 *      tiny ones; vn_validate_head() gets an exact-size copy of a prefix.
 *
 * Usage: ctest.bin [fuzz-iterations [seed]].  Prints one summary line; exits
 * 1 when any check failed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "vn_csum.h"
#include "vn_offload.h"
#include "vn_pkt.h"

/* Failures printed before going quiet (the count is still reported). */
#define TL_MAX_REPORTED 40ul
#include "testlib.h"

/* Fuzz iterations by default: ~2 s at -O2, ~30 s under ASan on this machine. */
#define FUZZ_ITERS_DEFAULT 200000ul
#define FUZZ_SEED_DEFAULT 0x9e3779b97f4a7c15ull
/* Frames handed to vn_fix_batch at once by the fuzz loop. */
#define FUZZ_BATCH 6
/* One fuzz case in this many uses a frame up to 64 KiB (the rest stay small). */
#define FUZZ_BIG_ONE_IN 128

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define TCP_CHECK 16
#define UDP_CHECK 6

/* What the fuzz cases reached: accepted by vn_validate, split, fully checked. */
static unsigned long fz_valid, fz_split, fz_checked;

/* ---- helpers ------------------------------------------------------------- */

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
	uint8_t *d = tl_xmalloc(n);

	if (n)
		memcpy(d, p, n);
	return d;
}

/* ---- frame builder ----------------------------------------------------------- */

enum { CHK_SEED, CHK_FULL, CHK_ZERO };

struct spec {
	int version, proto;
	int vlans;              /* 0..2 tags */
	size_t ip_opt;          /* IPv4 option bytes, multiple of 4, <= 40 */
	size_t tcp_opt;         /* TCP option bytes, multiple of 4, <= 40 */
	int v6_hop, v6_routing; /* IPv6: a hop-by-hop header; routing + dest options */
	size_t payload, pad;
	uint32_t seq;
	uint8_t flags;
	uint16_t ident;
	int df, check;
};

struct built {
	size_t len, l3, l4, l4h, ip_end;
	int version, proto;
};

static size_t spec_len(const struct spec *s)
{
	size_t n = 14 + 4 * (size_t)s->vlans;

	n += s->version == 4 ? 20 + s->ip_opt : 40 + 8 * (size_t)s->v6_hop +
		16 * (size_t)s->v6_routing;
	n += s->proto == IPPROTO_TCP_ ? 20 + s->tcp_opt : 8;
	return n + s->payload + s->pad;
}

/* Pseudo-header sum (reference), folded, not inverted. */
static uint16_t ref_pseudo(const uint8_t *f, size_t l3, int version, int proto, size_t l4len)
{
	uint8_t tail[4];
	uint16_t s;

	if (version == 4)
		s = tl_ref_sum(f + l3 + 12, 8, 0);
	else
		s = tl_ref_sum(f + l3 + 8, 32, 0);
	tl_put_be16(tail, (uint32_t)proto);
	tl_put_be16(tail + 2, (uint32_t)l4len);
	return tl_ref_sum(tail, 4, s);
}

/* Fill @f (spec_len(@s) bytes) as a guest would, payload random. */
static void build(uint8_t *f, const struct spec *s, struct built *b)
{
	static const uint8_t mac[12] = { 2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1 };
	size_t off = 12, l4len, i;
	uint8_t *l4;
	uint16_t seed, v;
	int tag;

	memcpy(f, mac, 12);
	for (tag = 0; tag < s->vlans; tag++) {
		tl_put_be16(f + off, s->vlans == 2 && tag == 0 ? 0x88a8 : 0x8100);
		tl_put_be16(f + off + 2, (uint32_t)(10 + tag));
		off += 4;
	}
	tl_put_be16(f + off, s->version == 4 ? 0x0800 : 0x86dd);
	off += 2;
	b->l3 = off;
	b->version = s->version;
	b->proto = s->proto;
	b->l4h = s->proto == IPPROTO_TCP_ ? 20 + s->tcp_opt : 8;
	l4len = b->l4h + s->payload;
	if (s->version == 4) {
		size_t ihl = 20 + s->ip_opt;

		f[off] = (uint8_t)(0x40 | (ihl / 4));
		f[off + 1] = 0;
		tl_put_be16(f + off + 2, (uint32_t)(ihl + l4len));
		tl_put_be16(f + off + 4, s->ident);
		tl_put_be16(f + off + 6, s->df ? 0x4000 : 0);
		f[off + 8] = 64;
		f[off + 9] = (uint8_t)s->proto;
		tl_put_be16(f + off + 10, 0);
		tl_put_be32(f + off + 12, 0xc6120001);        /* 198.18.0.1 */
		tl_put_be32(f + off + 16, 0xc6120002);        /* 198.18.0.2 */
		memset(f + off + 20, 1, s->ip_opt);     /* NOP options */
		tl_put_be16(f + off + 10, (uint16_t)~tl_ref_sum(f + off, ihl, 0));
		off += ihl;
	} else {
		size_t ext = 8 * (size_t)s->v6_hop + 16 * (size_t)s->v6_routing;
		uint8_t *e;

		tl_put_be32(f + off, 0x60000000);
		tl_put_be16(f + off + 4, (uint32_t)(ext + l4len));
		f[off + 7] = 64;
		memset(f + off + 8, 0, 32);
		f[off + 8] = 0xfd;
		f[off + 23] = 1;                        /* fd00::1 */
		f[off + 24] = 0xfd;
		f[off + 39] = 2;                        /* fd00::2 */
		e = f + off + 40;
		f[off + 6] = (uint8_t)(s->v6_hop ? 0 : s->v6_routing ? 43 : s->proto);
		if (s->v6_hop) {
			static const uint8_t hop[8] = { 0, 0, 1, 4, 0, 0, 0, 0 };

			memcpy(e, hop, 8);
			e[0] = (uint8_t)(s->v6_routing ? 43 : s->proto);
			e += 8;
		}
		if (s->v6_routing) {
			static const uint8_t rt[16] = { 60, 0, 4, 0, 0, 0, 0, 0,
							0, 0, 1, 4, 0, 0, 0, 0 };

			memcpy(e, rt, 16);
			e[8] = (uint8_t)s->proto;
		}
		off += 40 + ext;
	}
	b->l4 = off;
	l4 = f + off;
	if (s->proto == IPPROTO_TCP_) {
		tl_put_be16(l4, 40000);
		tl_put_be16(l4 + 2, 5201);
		tl_put_be32(l4 + 4, s->seq);
		tl_put_be32(l4 + 8, 1);
		l4[12] = (uint8_t)((b->l4h / 4) << 4);
		l4[13] = s->flags;
		tl_put_be16(l4 + 14, 65535);
		tl_put_be16(l4 + 16, 0);
		tl_put_be16(l4 + 18, 0);
		memset(l4 + 20, 1, s->tcp_opt);
	} else {
		tl_put_be16(l4, 40000);
		tl_put_be16(l4 + 2, 5201);
		tl_put_be16(l4 + 4, (uint32_t)l4len);
		tl_put_be16(l4 + 6, 0);
	}
	tl_rnd_fill(l4 + b->l4h, s->payload);
	b->ip_end = off + l4len;
	for (i = 0; i < s->pad; i++)
		f[b->ip_end + i] = 0xaa;
	b->len = b->ip_end + s->pad;

	seed = ref_pseudo(f, b->l3, s->version, s->proto, l4len);
	if (s->check == CHK_SEED)
		v = seed;
	else if (s->check == CHK_FULL)
		v = (uint16_t)~tl_ref_sum(l4, l4len, seed);
	else
		v = 0;
	if (s->check == CHK_FULL && v == 0 && s->proto == IPPROTO_UDP_)
		v = 0xffff;
	tl_put_be16(l4 + (s->proto == IPPROTO_TCP_ ? TCP_CHECK : UDP_CHECK), v);
}

static struct vn_net_hdr hdr_for(const struct built *b, uint8_t gso_type, uint16_t gso_size)
{
	struct vn_net_hdr h;

	memset(&h, 0, sizeof(h));
	h.flags = VN_HDR_F_NEEDS_CSUM;
	h.gso_type = gso_type;
	h.hdr_len = (uint16_t)(b->l4 + b->l4h);
	h.gso_size = gso_size;
	h.csum_start = (uint16_t)b->l4;
	h.csum_offset = b->proto == IPPROTO_TCP_ ? TCP_CHECK : UDP_CHECK;
	return h;
}

/* Reference check of an unfragmented segment laid out like @b. */
static int ref_ok(const uint8_t *f, size_t len, const struct built *b)
{
	size_t end, l4len;

	if (b->version == 4) {
		size_t ihl = (size_t)(f[b->l3] & 0x0f) * 4;

		if (tl_ref_sum(f + b->l3, ihl, 0) != 0xffff)
			return 0;
		end = b->l3 + tl_get_be16(f + b->l3 + 2);
	} else {
		end = b->l3 + 40 + tl_get_be16(f + b->l3 + 4);
	}
	if (end > len || end < b->l4 + b->l4h)
		return 0;
	l4len = end - b->l4;
	if (b->proto == IPPROTO_UDP_) {
		if (tl_get_be16(f + b->l4 + UDP_CHECK) == 0)
			return b->version == 4;
		l4len = tl_get_be16(f + b->l4 + 4);
	}
	return tl_ref_sum(f + b->l4, l4len, ref_pseudo(f, b->l3, b->version, b->proto, l4len)) ==
		0xffff;
}

/* ---- 1. known answers ------------------------------------------------------------ */

static const uint8_t kat_tcp4[] = {
	0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
	0x45, 0x00, 0x00, 0x3b, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x9c, 0x61, 0xc6, 0x12,
	0x00, 0x01, 0xc6, 0x12, 0x00, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x03, 0xe8,
	0x00, 0x00, 0x00, 0x01, 0x50, 0x18, 0xff, 0xff, 0xb0, 0x43, 0x00, 0x00, 'v', 'm',
	'd', 'n', 'e', 't', ' ', 'k', 'n', 'o', 'w', 'n', ' ', 'a', 'n', 's', 'w', 'e', 'r',
};
#define KAT_TCP4_CHECK_OFF 50
#define KAT_TCP4_CHECK 0xb043
#define KAT_TCP4_IPCSUM 0x9c61

static const uint8_t kat_udp6[] = {
	0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd,
	0x60, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x11, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x9c, 0x40,
	0x14, 0x51, 0x00, 0x1c, 0x96, 0x2b, 'v', 'm', 'd', 'n', 'e', 't', ' ', 'k', 'n', 'o',
	'w', 'n', ' ', 'a', 'n', 's', 'w', 'e', 'r', '!',
};
#define KAT_UDP6_CHECK_OFF 60
#define KAT_UDP6_CHECK 0x962b

static void test_known_answers(void)
{
	static const uint8_t rfc1071[8] = { 0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7 };
	static const uint8_t ip[20] = { 0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0,
					0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7 };
	uint8_t *f;
	struct vn_net_hdr h;

	/* RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2. */
	CHECK(vn_checksum_be(rfc1071, 8, 0) == 0xddf2);
	CHECK(tl_ref_sum(rfc1071, 8, 0) == 0xddf2);
	/* The same sum in pieces, and in memory order then byte-swapped. */
	CHECK(vn_checksum_be(rfc1071 + 4, 4, vn_checksum_be(rfc1071, 4, 0)) == 0xddf2);
	CHECK(vn_checksum_be(ip, 20, 0) == (uint16_t)~0xb861);
	CHECK(vn_checksum_be(NULL, 0, 0x1234) == 0x1234);
	CHECK(vn_csum_fold(0xffff0001u) == 0x0001);
	CHECK(vn_csum_fold(0x0001fffeu) == 0xffff);

	/* Fixed frames; expected values computed by tests/pktlib.py. */
	CHECK(vn_verify(kat_tcp4, sizeof(kat_tcp4)) == 1);
	CHECK(vn_verify(kat_udp6, sizeof(kat_udp6)) == 1);
	CHECK(tl_get_be16(kat_tcp4 + 24) == KAT_TCP4_IPCSUM);
	/* Replace the TCP checksum by the guest's seed and have it completed. */
	f = dup_bytes(kat_tcp4, sizeof(kat_tcp4));
	tl_put_be16(f + KAT_TCP4_CHECK_OFF, ref_pseudo(f, 14, 4, IPPROTO_TCP_, sizeof(kat_tcp4) - 34));
	CHECK(vn_verify(f, sizeof(kat_tcp4)) == 0);
	memset(&h, 0, sizeof(h));
	h.flags = VN_HDR_F_NEEDS_CSUM;
	h.csum_start = 34;
	h.csum_offset = TCP_CHECK;
	CHECK(vn_complete_csum(&h, f, sizeof(kat_tcp4)) == 0);
	CHECK(tl_get_be16(f + KAT_TCP4_CHECK_OFF) == KAT_TCP4_CHECK);
	free(f);
	f = dup_bytes(kat_udp6, sizeof(kat_udp6));
	tl_put_be16(f + KAT_UDP6_CHECK_OFF, ref_pseudo(f, 14, 6, IPPROTO_UDP_, sizeof(kat_udp6) - 54));
	h.csum_start = 54;
	h.csum_offset = UDP_CHECK;
	CHECK(vn_complete_csum(&h, f, sizeof(kat_udp6)) == 0);
	CHECK(tl_get_be16(f + KAT_UDP6_CHECK_OFF) == KAT_UDP6_CHECK);
	/* A flipped bit anywhere in the checksummed part is caught. */
	f[70] ^= 4;
	CHECK(vn_verify(f, sizeof(kat_udp6)) == 0);
	free(f);
}

/* vn_csum_partial/vn_csum_copy against ref_sum: every length up to 300 at
 * every alignment up to 16, and long buffers around the lane drain. */
static void test_csum_reference(void)
{
	static const size_t longs[] = { 262143, 262144, 262145, 262207, 524288 + 130,
					786432 + 7 };
	uint8_t *src = tl_xmalloc(786432 + 64), *dst = tl_xmalloc(786432 + 64);
	size_t len, al, i;
	int bad = 0;

	tl_rnd_fill(src, 786432 + 64);
	for (len = 0; len <= 300; len++) {
		for (al = 0; al < 16; al++) {
			uint16_t init = (uint16_t)tl_rnd();
			uint16_t want = tl_ref_sum(src + al, len, init);
			uint32_t s;

			if (vn_checksum_be(src + al, len, init) != want)
				bad++;
			s = vn_csum_copy(dst + (al ^ 5), src + al, len, 0);
			if (vn_csum_fold(s) != vn_csum_fold(vn_csum_partial(src + al, len, 0)) ||
			    memcmp(dst + (al ^ 5), src + al, len))
				bad++;
		}
	}
	CHECK(bad == 0);
	for (i = 0; i < sizeof(longs) / sizeof(longs[0]); i++) {
		uint8_t *ones = tl_xmalloc(longs[i]);

		memset(ones, 0xff, longs[i]);
		CHECK(vn_checksum_be(ones, longs[i], 0) == tl_ref_sum(ones, longs[i], 0));
		free(ones);
		CHECK(vn_checksum_be(src + 3, longs[i], 7) == tl_ref_sum(src + 3, longs[i], 7));
		CHECK(vn_csum_fold(vn_csum_copy(dst + 1, src + 2, longs[i], 0)) ==
		      vn_csum_fold(vn_csum_partial(src + 2, longs[i], 0)));
		CHECK(memcmp(dst + 1, src + 2, longs[i]) == 0);
	}
	free(src);
	free(dst);
}

/* ---- 2. segmentation ------------------------------------------------------------- */

struct segs {
	int n;
	uint8_t *out;
	size_t cap;
	uint32_t *lens;
	uint32_t max;
};

static void segs_free(struct segs *s)
{
	free(s->out);
	free(s->lens);
}

/* Segment with an arena big enough for any result (exact heap sizes). */
static struct segs segment_all(const struct vn_net_hdr *h, const uint8_t *f, size_t len,
			       uint32_t frag_id)
{
	struct segs s;
	struct vn_pkt pkt;
	size_t mss = h->gso_size ? h->gso_size : 1, per;

	vn_parse(f, len, &pkt);
	per = (size_t)pkt.l4_off + pkt.l4_hlen + VN_IPV6_FRAG_HLEN + VN_UDP_HLEN;
	s.max = (uint32_t)(len / mss + 2);
	s.cap = len + (size_t)s.max * per + 64;
	s.out = tl_xmalloc(s.cap);
	s.lens = tl_xmalloc(sizeof(uint32_t) * s.max);
	s.n = vn_segment(h, f, len, frag_id, s.out, s.cap, s.lens, s.max);
	return s;
}

static size_t segs_total(const struct segs *s)
{
	size_t t = 0;
	int i;

	for (i = 0; i < s->n; i++)
		t += s->lens[i];
	return t;
}

/* TCP/USO: segment count and sizes, checksums, payload, seq, flags, lengths. */
static void check_l4_segments(const uint8_t *f, const struct built *b, const struct segs *s,
			      size_t mss)
{
	size_t pay = b->ip_end - b->l4 - b->l4h, pos = 0, hl = b->l4 + b->l4h;
	const uint8_t *seg = s->out;
	size_t want_n = (pay + mss - 1) / mss;
	int i;

	if (!CHECK(s->n > 0 && (size_t)s->n == want_n))
		return;
	for (i = 0; i < s->n; seg += s->lens[i], i++) {
		size_t n = s->lens[i] - hl;
		int last = i == s->n - 1;

		CHECK(n == (last ? pay - pos : mss));
		CHECK(vn_verify(seg, s->lens[i]) == 1);
		CHECK(ref_ok(seg, s->lens[i], b));
		CHECK(memcmp(seg + hl, f + hl + pos, n) == 0);
		CHECK(memcmp(seg, f, b->l3) == 0);
		if (b->version == 4) {
			CHECK(tl_get_be16(seg + b->l3 + 2) == s->lens[i] - b->l3);
			CHECK(tl_get_be16(seg + b->l3 + 4) == (uint16_t)(tl_get_be16(f + b->l3 + 4) + i));
		} else {
			CHECK(tl_get_be16(seg + b->l3 + 4) == s->lens[i] - b->l3 - 40);
		}
		if (b->proto == IPPROTO_TCP_) {
			uint8_t fl = f[b->l4 + 13];

			CHECK(tl_get_be32(seg + b->l4 + 4) == tl_get_be32(f + b->l4 + 4) + (uint32_t)pos);
			if (!last)
				fl &= (uint8_t)~0x09;   /* FIN, PSH only on the last */
			if (i)
				fl &= (uint8_t)~0x80;   /* CWR only on the first */
			CHECK(seg[b->l4 + 13] == fl);
		} else {
			CHECK(tl_get_be16(seg + b->l4 + 4) == 8 + n);
			CHECK(tl_get_be16(seg + b->l4 + UDP_CHECK) != 0);
		}
		pos += n;
	}
	CHECK(pos == pay);
}

/* UFO: fragment fields, then reassemble and check the datagram's checksum. */
static void check_ufo(const uint8_t *f, const struct built *b, const struct segs *s,
		      size_t mss, uint32_t frag_id)
{
	size_t dlen = b->ip_end - b->l4, got = 0;
	size_t fh = b->l4;                      /* IPv6: fragment header goes here */
	size_t data_at = b->version == 4 ? b->l4 : b->l4 + 8;
	uint8_t *d = tl_xmalloc(dlen);
	const uint8_t *seg = s->out;
	int i;

	CHECK((size_t)s->n == (dlen + mss - 1) / mss);
	for (i = 0; i < s->n; seg += s->lens[i], i++) {
		size_t off, n = s->lens[i] - data_at;
		int mf;

		if (b->version == 4) {
			uint16_t fo = tl_get_be16(seg + b->l3 + 6);

			CHECK(tl_ref_sum(seg + b->l3, (size_t)(seg[b->l3] & 0x0f) * 4, 0) == 0xffff);
			CHECK(tl_get_be16(seg + b->l3 + 4) == tl_get_be16(f + b->l3 + 4));
			off = (size_t)(fo & 0x1fff) * 8;
			mf = (fo & 0x2000) != 0;
			CHECK((fo & 0x4000) == 0);
		} else {
			uint16_t fo = tl_get_be16(seg + fh + 2);

			CHECK(seg[b->l3 + 6] == 44 && seg[fh] == IPPROTO_UDP_);
			CHECK(tl_get_be32(seg + fh + 4) == frag_id);
			CHECK(tl_get_be16(seg + b->l3 + 4) == s->lens[i] - b->l3 - 40);
			off = fo & 0xfff8;
			mf = fo & 1;
		}
		CHECK(mf == (i < s->n - 1));
		if (!CHECK(off == got && off + n <= dlen))
			break;
		memcpy(d + off, seg + data_at, n);
		got += n;
	}
	CHECK(got == dlen);
	CHECK(memcmp(d, f + b->l4, 6) == 0 && memcmp(d + 8, f + b->l4 + 8, dlen - 8) == 0);
	CHECK(tl_ref_sum(d, dlen, ref_pseudo(f, b->l3, b->version, IPPROTO_UDP_, dlen)) == 0xffff);
	free(d);
}

/* Copy mode and iovec mode must produce the same bytes. */
static void check_iov_same(const struct vn_net_hdr *h, const uint8_t *f, size_t len,
			   uint32_t frag_id, const struct segs *s)
{
	uint32_t max = s->max;
	size_t cap = s->cap, k = 0;
	uint8_t *arena = tl_xmalloc(cap);
	struct iovec *iov = tl_xmalloc(sizeof(*iov) * 2 * max);
	const uint8_t *want = s->out;
	int n = vn_segment_iov(h, f, len, frag_id, arena, cap, iov, max), i;

	if (CHECK(n == s->n)) {
		for (i = 0; i < n; i++) {
			const struct iovec *a = &iov[2 * i], *p = &iov[2 * i + 1];
			const uint8_t *pb = p->iov_base;

			CHECK(a->iov_len + p->iov_len == s->lens[i]);
			CHECK(memcmp(a->iov_base, want, a->iov_len) == 0);
			CHECK(p->iov_len == 0 || (pb >= f && pb + p->iov_len <= f + len));
			CHECK(p->iov_len == 0 || memcmp(pb, want + a->iov_len, p->iov_len) == 0);
			want += s->lens[i];
			k += a->iov_len;
		}
		CHECK(k <= cap);
	}
	free(arena);
	free(iov);
}

static void seg_case(const struct spec *sp, uint8_t gso, uint16_t mss)
{
	size_t len = spec_len(sp);
	uint8_t *f = tl_xmalloc(len);
	struct built b;
	struct vn_net_hdr h;
	struct segs s;
	uint32_t fid = (uint32_t)tl_rnd();

	build(f, sp, &b);
	h = hdr_for(&b, gso, mss);
	CHECK(vn_validate(&h, f, len, NULL) == 0);
	s = segment_all(&h, f, len, fid);
	if ((gso & 0x7f) == VN_GSO_UDP)
		check_ufo(f, &b, &s, mss, fid);
	else
		check_l4_segments(f, &b, &s, mss);
	check_iov_same(&h, f, len, fid, &s);
	segs_free(&s);
	free(f);
}

static void test_segmentation(void)
{
	struct spec t4 = { .version = 4, .proto = IPPROTO_TCP_, .payload = 65000,
			   .seq = 0xfffff000u, .flags = 0x80 | 0x40 | 0x10 | 0x08 | 0x01,
			   .ident = 0xfff0, .df = 1, .tcp_opt = 12 };
	struct spec t6 = { .version = 6, .proto = IPPROTO_TCP_, .payload = 64000,
			   .seq = 7, .flags = 0x18, .tcp_opt = 12, .vlans = 1 };
	struct spec u4 = { .version = 4, .proto = IPPROTO_UDP_, .payload = 64000, .ident = 1,
			   .ip_opt = 8 };
	struct spec u6 = { .version = 6, .proto = IPPROTO_UDP_, .payload = 30000,
			   .v6_hop = 1, .vlans = 2 };
	struct spec f4 = { .version = 4, .proto = IPPROTO_UDP_, .payload = 20000, .ident = 9,
			   .df = 1, .check = CHK_ZERO };
	struct spec f6 = { .version = 6, .proto = IPPROTO_UDP_, .payload = 20000,
			   .check = CHK_ZERO };

	seg_case(&t4, VN_GSO_TCPV4 | VN_GSO_ECN, 1448);    /* seq and IP ID wrap */
	seg_case(&t4, VN_GSO_TCPV4, 1);
	seg_case(&t6, VN_GSO_TCPV6, 1428);
	t6.v6_hop = 1;
	t6.v6_routing = 1;
	seg_case(&t6, VN_GSO_TCPV6, 999);
	seg_case(&u4, VN_GSO_UDP_L4, 1472);
	seg_case(&u4, VN_GSO_UDP_L4, 500);                 /* exactly 128 segments */
	seg_case(&u6, VN_GSO_UDP_L4, 1000);
	seg_case(&f4, VN_GSO_UDP, 1480);
	seg_case(&f4, VN_GSO_UDP, 8);
	seg_case(&f6, VN_GSO_UDP, 1448);
}

/* ---- 3. validate boundaries ---------------------------------------------------------- */

static int validate_buf(const struct vn_net_hdr *h, const uint8_t *f, size_t len)
{
	uint8_t *copy = dup_bytes(f, len);     /* exact size: ASan sees overreads */
	int rc = vn_validate(h, copy, len, NULL);

	free(copy);
	return rc;
}

static void test_validate_boundaries(void)
{
	struct spec sp = { .version = 4, .proto = IPPROTO_TCP_, .payload = 100, .df = 1 };
	struct spec up = { .version = 4, .proto = IPPROTO_UDP_, .payload = 1280 };
	size_t len = spec_len(&sp), ulen = spec_len(&up);
	uint8_t *f = tl_xmalloc(len), *u = tl_xmalloc(ulen), *big = calloc(1, VN_MAX_FRAME + 1);
	struct built b, ub;
	struct vn_net_hdr h, z, g;

	if (!big)
		exit(2);
	build(f, &sp, &b);
	build(u, &up, &ub);
	memset(&z, 0, sizeof(z));
	CHECK(validate_buf(&z, f, 13) == -VN_BAD_FRAME_SHORT);
	CHECK(validate_buf(&z, f, 14) == 0);
	CHECK(validate_buf(&z, big, VN_MAX_FRAME) == 0);
	CHECK(validate_buf(&z, big, VN_MAX_FRAME + 1) == -VN_BAD_FRAME_LONG);
	h = z;
	h.hdr_len = 13;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_HDR_LEN);
	h.hdr_len = 1;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_HDR_LEN);
	h.hdr_len = 14;
	CHECK(validate_buf(&h, f, len) == 0);
	h.hdr_len = (uint16_t)len;
	CHECK(validate_buf(&h, f, len) == 0);
	h.hdr_len = (uint16_t)(len + 1);
	CHECK(validate_buf(&h, f, len) == -VN_BAD_HDR_LEN);

	/* NEEDS_CSUM without GSO: the field must end inside the frame. */
	h = hdr_for(&b, 0, 0);
	h.csum_offset = (uint16_t)(len - b.l4 - 2);
	CHECK(validate_buf(&h, f, len) == 0);
	h.csum_offset++;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_CSUM_OFFSET);
	h = hdr_for(&b, 0, 0);
	h.csum_start = 19;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_CSUM_START);
	h.csum_start = 20;
	CHECK(validate_buf(&h, f, len) == 0);
	h.csum_start = (uint16_t)(len + 1);
	CHECK(validate_buf(&h, f, len) == -VN_BAD_CSUM_START);
	h.csum_start = 0xffff;
	h.csum_offset = 0xffff;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_CSUM_START);

	/* GSO header fields. */
	g = hdr_for(&b, VN_GSO_TCPV4, 50);
	CHECK(validate_buf(&g, f, len) == 0);
	h = g;
	h.gso_size = 0;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_GSO_SIZE);
	h.gso_size = VN_GSO_BY_FRAGS;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_GSO_SIZE);
	h.gso_size = 1;
	CHECK(validate_buf(&h, f, len) == 0);
	h = g;
	h.gso_type = 2;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_GSO_TYPE);
	h.gso_type = 0x11;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_GSO_TYPE);
	h = g;
	h.flags = 0;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_GSO_NO_CSUM);
	h = g;
	h.csum_start = (uint16_t)(b.l4 + 4);
	CHECK(validate_buf(&h, f, len) == -VN_BAD_CSUM_START);
	h = g;
	h.csum_offset = UDP_CHECK;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_CSUM_OFFSET);
	h = g;
	h.gso_type = VN_GSO_TCPV6;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_CSUM_START);    /* below an IPv6 header */
	h.gso_type = VN_GSO_UDP_L4;
	CHECK(validate_buf(&h, f, len) == -VN_BAD_L4);
	/* The frame cut inside the TCP header. */
	CHECK(validate_buf(&g, f, b.l4 + 19) < 0);
	CHECK(validate_buf(&g, f, b.l4 + 20) == 0);               /* one packet, no payload */
	CHECK(validate_buf(&g, f, b.l4 + 21) == 0);
	g.hdr_len = (uint16_t)(b.l4 + 21);
	CHECK(validate_buf(&g, f, b.l4 + 20) == -VN_BAD_HDR_LEN);
	g.hdr_len = 0;
	CHECK(validate_buf(&g, f, b.l4 + 19) == -VN_BAD_CSUM_START);

	/* UDP: UFO gso_size floor, USO segment ceiling (exactly 128 passes). */
	g = hdr_for(&ub, VN_GSO_UDP, 8);
	CHECK(validate_buf(&g, u, ulen) == 0);
	g.gso_size = 7;
	CHECK(validate_buf(&g, u, ulen) == -VN_BAD_GSO_SIZE);
	g.gso_type = VN_GSO_UDP | VN_GSO_ECN;
	g.gso_size = 8;
	CHECK(validate_buf(&g, u, ulen) == -VN_BAD_GSO_TYPE);
	g = hdr_for(&ub, VN_GSO_UDP_L4, 10);
	CHECK(validate_buf(&g, u, ulen) == 0);                    /* 1280 / 10 = 128 */
	CHECK(validate_buf(&g, u, ulen - 1) == 0);
	g.gso_size = 9;
	CHECK(validate_buf(&g, u, ulen) == -VN_BAD_USO_SEGS);
	g.gso_type = VN_GSO_TCPV4;
	CHECK(validate_buf(&g, u, ulen) == -VN_BAD_L4);

	free(f);
	free(u);
	free(big);
}

/* NO_SPACE: arenas and tables of exactly the needed size pass, one less fails. */
static void check_no_space(const struct vn_net_hdr *h, const uint8_t *f, size_t len,
			   uint32_t fid, const struct segs *s)
{
	size_t total = segs_total(s), hdr_bytes = 0;
	uint8_t *a = tl_xmalloc(total), *a1 = tl_xmalloc(total ? total - 1 : 0);
	uint32_t *l = tl_xmalloc(sizeof(uint32_t) * (size_t)s->n);
	struct iovec *iov = tl_xmalloc(sizeof(*iov) * 2 * (size_t)s->n);
	int i;

	CHECK(vn_segment(h, f, len, fid, a, total, l, (uint32_t)s->n) == s->n);
	CHECK(memcmp(a, s->out, total) == 0);
	CHECK(vn_segment(h, f, len, fid, a1, total - 1, l, (uint32_t)s->n) == -VN_BAD_NO_SPACE);
	CHECK(vn_segment(h, f, len, fid, a, total, l, (uint32_t)s->n - 1) == -VN_BAD_NO_SPACE);
	if (CHECK(vn_segment_iov(h, f, len, fid, a, total, iov, (uint32_t)s->n) == s->n)) {
		for (i = 0; i < s->n; i++)
			hdr_bytes += iov[2 * i].iov_len;
		free(a1);
		a1 = tl_xmalloc(hdr_bytes);
		CHECK(vn_segment_iov(h, f, len, fid, a1, hdr_bytes, iov, (uint32_t)s->n) ==
		      s->n);
		if (hdr_bytes)
			CHECK(vn_segment_iov(h, f, len, fid, a1, hdr_bytes - 1, iov,
					     (uint32_t)s->n) == -VN_BAD_NO_SPACE);
		CHECK(vn_segment_iov(h, f, len, fid, a1, hdr_bytes, iov, (uint32_t)s->n - 1) ==
		      -VN_BAD_NO_SPACE);
	}
	free(a);
	free(a1);
	free(l);
	free(iov);
}

/* A tiny arena and segment table (exact heap sizes): the call fits and gives
 * the same result, or fails with NO_SPACE without writing past them. */
static void check_tiny(const struct vn_net_hdr *h, const uint8_t *f, size_t len,
		       uint32_t fid, const struct segs *s)
{
	size_t cap = tl_rnd_below(VN_ETH_HLEN * 12);
	uint32_t max = 1 + tl_rnd_below(4);
	uint8_t *a = tl_xmalloc(cap);
	uint32_t *l = tl_xmalloc(sizeof(uint32_t) * max);
	struct iovec *iov = tl_xmalloc(sizeof(*iov) * 2 * max);
	int r = vn_segment(h, f, len, fid, a, cap, l, max);

	CHECK(r == -VN_BAD_NO_SPACE || (r == s->n && segs_total(s) <= cap &&
					 memcmp(a, s->out, segs_total(s)) == 0));
	r = vn_segment_iov(h, f, len, fid, a, cap, iov, max);
	CHECK(r == -VN_BAD_NO_SPACE || r == s->n);
	free(a);
	free(l);
	free(iov);
}

/* vn_validate_head() on an exact-size copy of the frame's first bytes: the
 * same verdict as vn_validate() once the copy holds every parsed header. */
static void check_head(const struct vn_net_hdr *h, const uint8_t *f, size_t len, int v)
{
	size_t hl = tl_rnd_below(2) ? tl_rnd_below((uint32_t)len + 1) : len;
	uint8_t *head = dup_bytes(f, hl);
	struct vn_pkt full, part;
	int vh = vn_validate_head(h, head, hl, len, &part);

	CHECK(vh <= 0 && vh > -VN_BAD_MAX_ && vh != -VN_BAD_NO_SPACE);
	vn_parse(f, len, &full);
	if (hl == len || (full.l4_off && hl >= (size_t)full.l4_off + full.l4_hlen))
		CHECK(vh == v);
	free(head);
}

/* ---- 4. fuzz ------------------------------------------------------------------------------ */

static const uint16_t edge16[] = { 0, 1, 2, 6, 7, 8, 9, 13, 14, 15, 16, 18, 19, 20, 21, 22,
				   34, 38, 40, 42, 54, 58, 62, 66, 74, 1448, 0x7fff, 0x8000,
				   0xfffe, 0xffff };
static const uint8_t edge_gso[] = { 0, 1, 3, 4, 5, 0x81, 0x84, 2, 6, 0x11, 0x21, 0x80, 0x83,
				    0x85, 0xff };

static uint16_t rnd_edge16(void)
{
	return tl_rnd_below(2) ? edge16[tl_rnd_below(sizeof(edge16) / sizeof(edge16[0]))] :
		(uint16_t)tl_rnd();
}

static struct vn_net_hdr rnd_hdr(void)
{
	struct vn_net_hdr h;

	h.flags = (uint8_t)(tl_rnd_below(2) ? tl_rnd_below(8) : tl_rnd());
	h.gso_type = tl_rnd_below(2) ? edge_gso[tl_rnd_below(sizeof(edge_gso))] : (uint8_t)tl_rnd();
	h.hdr_len = rnd_edge16();
	h.gso_size = rnd_edge16();
	h.csum_start = rnd_edge16();
	h.csum_offset = rnd_edge16();
	h.num_buffers = (uint16_t)tl_rnd();
	return h;
}

static void mutate_hdr(struct vn_net_hdr *h)
{
	uint16_t d = tl_rnd_below(2) ? (uint16_t)(tl_rnd_below(9) - 4) : rnd_edge16();

	switch (tl_rnd_below(6)) {
	case 0: h->flags = (uint8_t)(h->flags ^ (1u << tl_rnd_below(8))); break;
	case 1: h->gso_type = edge_gso[tl_rnd_below(sizeof(edge_gso))]; break;
	case 2: h->hdr_len = (uint16_t)(h->hdr_len + d); break;
	case 3: h->gso_size = (uint16_t)(h->gso_size + d); break;
	case 4: h->csum_start = (uint16_t)(h->csum_start + d); break;
	default: h->csum_offset = (uint16_t)(h->csum_offset + d); break;
	}
}

static void rnd_spec(struct spec *s, int big)
{
	memset(s, 0, sizeof(*s));
	s->version = tl_rnd_below(2) ? 4 : 6;
	s->proto = tl_rnd_below(2) ? IPPROTO_TCP_ : IPPROTO_UDP_;
	s->vlans = (int)tl_rnd_below(3);
	if (s->version == 4)
		s->ip_opt = tl_rnd_below(4) ? 0 : 4 * (size_t)tl_rnd_below(11);
	else {
		s->v6_hop = !tl_rnd_below(4);
		s->v6_routing = !tl_rnd_below(4);
	}
	if (s->proto == IPPROTO_TCP_)
		s->tcp_opt = tl_rnd_below(3) ? 0 : 4 * (size_t)tl_rnd_below(11);
	s->payload = big ? tl_rnd_below(65400 - 200) : tl_rnd_below(3) ? tl_rnd_below(3000) :
		tl_rnd_below(64);
	s->pad = tl_rnd_below(8) ? 0 : tl_rnd_below(20);
	s->seq = (uint32_t)tl_rnd();
	s->flags = (uint8_t)tl_rnd();
	s->ident = (uint16_t)tl_rnd();
	s->df = (int)tl_rnd_below(2);
	s->check = tl_rnd_below(4) ? CHK_SEED : (int)tl_rnd_below(3);
}

/* The GSO header a guest would send, with a gso_size that often splits. */
static struct vn_net_hdr valid_hdr(const struct built *b, size_t payload)
{
	uint8_t gso;
	uint16_t mss = (uint16_t)(1 + tl_rnd_below((uint32_t)(payload / 2 + 8)));

	if (b->proto == IPPROTO_TCP_)
		gso = b->version == 4 ? VN_GSO_TCPV4 : VN_GSO_TCPV6;
	else
		gso = tl_rnd_below(2) ? VN_GSO_UDP_L4 : VN_GSO_UDP;
	if (!tl_rnd_below(5))
		gso = 0;
	if (gso == VN_GSO_UDP_L4 && payload / mss >= VN_USO_MAX_SEGS && tl_rnd_below(4))
		mss = (uint16_t)(payload / VN_USO_MAX_SEGS + 1);
	if (gso == VN_GSO_UDP)
		mss = (uint16_t)(mss < 8 ? 8 : mss & ~7u);
	return hdr_for(b, gso, gso ? mss : 0);
}

struct fcase {
	struct vn_net_hdr h;
	uint8_t *f;
	size_t len;
};

static struct fcase ring[FUZZ_BATCH];
static unsigned ring_n;

/* Size bound: input plus one replicated header per extra segment. */
static void check_sizes(const struct vn_net_hdr *h, const uint8_t *f, size_t len,
			const struct segs *s)
{
	struct vn_pkt pkt;
	size_t head, extra = 0, total = segs_total(s), biggest = 0;
	int i;

	if (s->n == 1) {
		CHECK(s->lens[0] == len);
		return;
	}
	vn_parse(f, len, &pkt);
	head = (size_t)pkt.l4_off + pkt.l4_hlen;
	if ((h->gso_type & 0x7f) == VN_GSO_UDP) {
		head = pkt.l4_off;
		if (pkt.ip_version == 6)
			extra = VN_IPV6_FRAG_HLEN;
	}
	CHECK(total == len + (size_t)(s->n - 1) * head + (size_t)s->n * extra);
	for (i = 0; i < s->n; i++)
		biggest = s->lens[i] > biggest ? s->lens[i] : biggest;
	CHECK(biggest <= head + extra + h->gso_size);
}

static void fuzz_pair(const struct vn_net_hdr *h, const uint8_t *f, size_t len,
		      const struct built *valid, size_t payload)
{
	uint8_t *before = dup_bytes(f, len), *done = dup_bytes(f, len);
	uint32_t fid = (uint32_t)tl_rnd();
	struct segs s;
	int v = vn_validate(h, f, len, NULL), i;
	size_t off = 0;

	CHECK(v <= 0 && v > -VN_BAD_MAX_ && v != -VN_BAD_NO_SPACE);
	CHECK(vn_complete_csum(h, done, len) == v);
	check_head(h, f, len, v);
	vn_verify(f, len);
	s = segment_all(h, f, len, fid);
	if (v < 0) {
		CHECK(s.n == v);
	} else if (CHECK(s.n > 0)) {
		fz_valid++;
		fz_split += s.n > 1;
		fz_checked += valid && s.n > 1;
		check_sizes(h, f, len, &s);
		if (s.n == 1)
			CHECK(memcmp(s.out, done, len) == 0);
		for (i = 0; i < s.n; off += s.lens[i], i++)
			vn_verify(s.out + off, s.lens[i]);
		/* An unmutated frame with a guest seed: every segment must check. */
		if (valid && s.n > 1 && (h->gso_type & 0x7f) != VN_GSO_UDP)
			check_l4_segments(f, valid, &s, h->gso_size);
		else if (valid && s.n > 1 && valid->version == 4 && valid->ip_end == len)
			check_ufo(f, valid, &s, h->gso_size, fid);
		check_iov_same(h, f, len, fid, &s);
		check_no_space(h, f, len, fid, &s);
		check_tiny(h, f, len, fid, &s);
	}
	CHECK(memcmp(before, f, len) == 0);     /* the input is never written */
	(void)payload;
	segs_free(&s);
	free(before);
	free(done);
}

/* vn_fix_batch over the last few cases equals vn_segment on each one, with an
 * exact arena; with a smaller one, each frame gets its result or NO_SPACE. */
static void fuzz_batch(void)
{
	struct vn_batch_ent ents[FUZZ_BATCH];
	struct segs each[FUZZ_BATCH];
	uint32_t base = (uint32_t)tl_rnd(), segs = 0, k;
	size_t bytes = 0, pos = 0, small;
	uint8_t *arena;
	uint32_t *lens;
	int n;

	for (k = 0; k < ring_n; k++) {
		each[k] = segment_all(&ring[k].h, ring[k].f, ring[k].len, base + k);
		ents[k].hdr = ring[k].h;
		ents[k].frame = ring[k].f;
		ents[k].len = (uint32_t)ring[k].len;
		if (each[k].n > 0) {
			bytes += segs_total(&each[k]);
			segs += (uint32_t)each[k].n;
		}
	}
	arena = tl_xmalloc(bytes);
	lens = tl_xmalloc(sizeof(uint32_t) * segs);
	n = vn_fix_batch(ents, ring_n, base, arena, bytes, lens, segs);
	CHECK(n == (int)segs);
	for (k = 0; k < ring_n; k++) {
		CHECK(ents[k].result == each[k].n);
		if (ents[k].result > 0) {
			size_t t = segs_total(&each[k]);

			CHECK(memcmp(arena + pos, each[k].out, t) == 0);
			CHECK(memcmp(lens + ents[k].first_seg, each[k].lens,
				     sizeof(uint32_t) * (size_t)each[k].n) == 0);
			pos += t;
		}
	}
	free(arena);
	small = tl_rnd_below((uint32_t)bytes + 1);
	arena = tl_xmalloc(small);
	n = vn_fix_batch(ents, ring_n, base, arena, small, lens, tl_rnd_below(segs + 1));
	for (pos = 0, k = 0; k < ring_n; k++) {
		if (ents[k].result == -VN_BAD_NO_SPACE && each[k].n > 0)
			continue;
		if (!CHECK(ents[k].result == each[k].n))
			continue;
		if (ents[k].result > 0) {
			size_t t = segs_total(&each[k]);

			CHECK(pos + t <= small && memcmp(arena + pos, each[k].out, t) == 0);
			pos += t;
		}
	}
	CHECK(n >= 0);
	free(arena);
	free(lens);
	for (k = 0; k < ring_n; k++)
		segs_free(&each[k]);
}

static void ring_put(const struct vn_net_hdr *h, const uint8_t *f, size_t len)
{
	struct fcase *c = &ring[ring_n];

	c->h = *h;
	c->f = dup_bytes(f, len);
	c->len = len;
	if (++ring_n == FUZZ_BATCH) {
		fuzz_batch();
		while (ring_n)
			free(ring[--ring_n].f);
	}
}

static void fuzz_one(void)
{
	struct spec sp;
	struct built b;
	struct vn_net_hdr h;
	size_t len, cut, add, i;
	uint8_t *f, *g;
	int mode = (int)tl_rnd_below(8), big = !tl_rnd_below(FUZZ_BIG_ONE_IN), mutated = 0;

	if (mode == 0) {                        /* random bytes */
		len = tl_rnd_below(2) ? tl_rnd_below(14) : tl_rnd_below(400);
		f = tl_xmalloc(len);
		tl_rnd_fill(f, len);
		h = rnd_hdr();
		fuzz_pair(&h, f, len, NULL, 0);
		ring_put(&h, f, len);
		free(f);
		return;
	}
	rnd_spec(&sp, big);
	len = spec_len(&sp);
	f = tl_xmalloc(len);
	build(f, &sp, &b);
	h = mode == 1 ? rnd_hdr() : valid_hdr(&b, sp.payload);
	if (mode >= 2 && mode <= 4) {
		for (i = tl_rnd_below(3); i > 0; i--, mutated = 1)
			mutate_hdr(&h);
		for (i = tl_rnd_below(4); i > 0; i--, mutated = 1)
			f[tl_rnd_below((uint32_t)(b.l4 + b.l4h + 8 < len ? b.l4 + b.l4h + 8 : len))] ^=
				(uint8_t)(1 + tl_rnd_below(255));
	}
	if (mode == 5) {                        /* cut and/or extended */
		cut = tl_rnd_below(2) ? tl_rnd_below((uint32_t)len + 1) : 0;
		add = tl_rnd_below(2) ? tl_rnd_below(64) : 0;
		g = tl_xmalloc(len - cut + add);
		memcpy(g, f, len - cut);
		tl_rnd_fill(g + len - cut, add);
		free(f);
		f = g;
		len = len - cut + add;
		mutated = 1;
	}
	fuzz_pair(&h, f, len, mutated || mode == 1 || sp.check != CHK_SEED || sp.pad ? NULL : &b,
		  sp.payload);
	ring_put(&h, f, len);
	free(f);
}

static void test_fuzz(unsigned long iters)
{
	tl.in_fuzz = 1;
	for (tl.fuzz_iter = 0; tl.fuzz_iter < iters; tl.fuzz_iter++) {
		vn_csum_select(tl.fuzz_iter % 4 != 3);     /* a quarter on the SSE2 path */
		fuzz_one();
	}
	vn_csum_select(1);
	while (ring_n)
		free(ring[--ring_n].f);
	tl.in_fuzz = 0;
}

int main(int argc, char **argv)
{
	unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 0) : FUZZ_ITERS_DEFAULT;
	uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : FUZZ_SEED_DEFAULT;

	tl.rng = seed ? seed : FUZZ_SEED_DEFAULT;
	test_known_answers();
	/* Both summing paths: the SIMD one this CPU picks, then SSE2/scalar. */
	test_csum_reference();
	if (vn_csum_select(0) == 0) {
		test_known_answers();
		test_csum_reference();
	}
	vn_csum_select(1);
	test_segmentation();
	test_validate_boundaries();
	test_fuzz(iters);
	printf("test_offload: %lu checks, %lu failed; fuzz: %lu iterations (seed %#llx), "
	       "%lu accepted, %lu segmented, %lu checked segment by segment: %s\n",
	       tl.checks, tl.fails, iters, (unsigned long long)seed, fz_valid, fz_split,
	       fz_checked, tl.fails ? "FAIL" : "ok");
	return tl.fails ? 1 : 0;
}
