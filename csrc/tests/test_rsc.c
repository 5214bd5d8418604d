/*
 * test_rsc.c - standalone tests of the RSC engine (csrc/vn_rsc.c), no Python.
 *
 * Theory of operation
 *
 * Built with every C file under csrc/ (see the build line below) and run
 * plain and under ASan + UBSan.  Three parts:
 *   1. behaviour: a bulk stream becomes units of 45 segments whose headers
 *      are what Linux GRO hands a tap reader, and which vn_segment() splits
 *      back into the very input frames; rsc mode's counts and full
 *      checksums (checked with a byte-at-a-time reference sum); the timer
 *      with injected time; bypass and finalizing segments; LRU eviction; the
 *      batch entry point against single pushes;
 *   2. the API's refusals: bad configurations, short output tables, NULLs;
 *   3. a deterministic fuzz loop (xorshift64*, fixed seed): streams of
 *      segments from a few flows with random flags, sizes, options, reorder
 *      and bad checksums, some mutated, cut, extended or replaced by random
 *      bytes, pushed with random times, polls and flushes.  Every frame is a
 *      heap block of exactly its length, so ASan reports any read past it.
 *      Invariants: a bypassed or lone segment is the input frame itself; a
 *      unit's GSO header validates and splits into as many segments as it
 *      claims, each with correct checksums; after a flush every input frame
 *      has been accounted for exactly once.
 *
 * Build: gcc -O2 -Wall -Wextra -Wconversion -Icsrc -DVN_VERSION='"ctest"' \
 *          -o test_rsc csrc/tests/test_rsc.c csrc/vn_*.c
 * Usage: test_rsc [fuzz-iterations [seed]].  Prints one summary line; exits
 * 1 when any check failed.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vn_csum.h"
#include "vn_offload.h"
#include "vn_pkt.h"
#include "vn_rsc.h"

/* Failures printed before going quiet (the count is still reported). */
#define TL_MAX_REPORTED 40ul
#define TL_FUZZ_WHAT "fuzz stream"
#include "testlib.h"

/* Fuzz streams by default: ~1 s at -O2, ~20 s under ASan on this machine. */
#define FUZZ_ITERS_DEFAULT 4000ul
#define FUZZ_SEED_DEFAULT 0x2545f4914f6cdd1dull
/* Frames per fuzz stream, at most. */
#define FUZZ_STREAM_MAX 160
#define MSS 1448
#define US 1000ull
/* Room for any segment the builder makes: Ethernet, 2 tags, IPv6, TCP + options, payload. */
#define SEG_MAX (14 + 8 + 40 + 60 + 9000)
#define OUT_MAX (VN_RSC_MAX_FLOWS + 4)

/* What the fuzz reached: coalesced units split back, frames accounted for. */
static unsigned long fz_units, fz_frames;

/* ---- segment builder ----------------------------------------------------- */

struct flow {
	int version;
	int vlans;
	uint16_t sport;
	uint32_t seq;
	uint16_t ipid;
};

struct segspec {
	uint32_t seq, ack;
	uint16_t window, ipid;
	uint8_t flags;
	uint8_t ttl;
	int opts;               /* 12 bytes of timestamp option when set */
	uint32_t tsval;
	size_t plen;
	int bad_csum;
	int pad;                /* pad to 60 bytes when shorter */
};

static size_t l3_of(const struct flow *fl)
{
	return 14 + 4 * (size_t)fl->vlans;
}

static uint16_t pseudo_ref(const uint8_t *ip, int version, size_t tcp_len)
{
	uint8_t ph[40];
	size_t n;

	if (version == 4) {
		memcpy(ph, ip + 12, 8);
		ph[8] = 0;
		ph[9] = 6;
		tl_put_be16(ph + 10, (uint32_t)tcp_len);
		n = 12;
	} else {
		memcpy(ph, ip + 8, 32);
		tl_put_be32(ph + 32, (uint32_t)tcp_len);
		ph[36] = ph[37] = ph[38] = 0;
		ph[39] = 6;
		n = 40;
	}
	return tl_ref_sum(ph, n, 0);
}

/* Build one segment of @fl into @f; return its length. */
static size_t build_seg(uint8_t *f, const struct flow *fl, const struct segspec *sp)
{
	size_t l3 = l3_of(fl), iph = fl->version == 4 ? 20 : 40, l4 = l3 + iph;
	size_t thl = 20 + (sp->opts ? 12 : 0), len = l4 + thl + sp->plen, i;
	uint8_t *ip = f + l3, *t = f + l4;

	memcpy(f, "\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01", 12);
	for (i = 0; i < (size_t)fl->vlans; i++) {
		tl_put_be16(f + 12 + 4 * i, i + 1 < (size_t)fl->vlans ? 0x88a8 : 0x8100);
		tl_put_be16(f + 14 + 4 * i, 100 + (uint32_t)i);
	}
	tl_put_be16(f + l3 - 2, fl->version == 4 ? 0x0800 : 0x86dd);
	if (fl->version == 4) {
		ip[0] = 0x45;
		ip[1] = 0;
		tl_put_be16(ip + 2, (uint32_t)(iph + thl + sp->plen));
		tl_put_be16(ip + 4, sp->ipid);
		tl_put_be16(ip + 6, 0x4000);
		ip[8] = sp->ttl;
		ip[9] = 6;
		tl_put_be16(ip + 10, 0);
		memcpy(ip + 12, "\xc6\x12\x00\x01\xc6\x12\x00\x02", 8);
		tl_put_be16(ip + 10, (uint16_t)~tl_ref_sum(ip, 20, 0));
	} else {
		tl_put_be32(ip, 0x60000000);
		tl_put_be16(ip + 4, (uint32_t)(thl + sp->plen));
		ip[6] = 6;
		ip[7] = sp->ttl;
		memset(ip + 8, 0, 32);
		ip[8] = ip[24] = 0xfd;
		ip[23] = 1;
		ip[39] = 2;
	}
	tl_put_be16(t, fl->sport);
	tl_put_be16(t + 2, 5201);
	tl_put_be32(t + 4, sp->seq);
	tl_put_be32(t + 8, sp->ack);
	t[12] = (uint8_t)((thl / 4) << 4);
	t[13] = sp->flags;
	tl_put_be16(t + 14, sp->window);
	tl_put_be16(t + 16, 0);
	tl_put_be16(t + 18, 0);
	if (sp->opts) {
		memcpy(t + 20, "\x01\x01\x08\x0a", 4);
		tl_put_be32(t + 24, sp->tsval);
		tl_put_be32(t + 28, 77);
	}
	for (i = 0; i < sp->plen; i++)
		t[thl + i] = (uint8_t)(sp->seq + i * 7);
	tl_put_be16(t + 16, (uint16_t)~tl_ref_sum(t, thl + sp->plen, pseudo_ref(ip, fl->version,
								 thl + sp->plen)));
	if (sp->bad_csum)
		t[16] ^= 0x5a;
	if (sp->pad && len < 60) {
		memset(f + len, 0, 60 - len);
		len = 60;
	}
	return len;
}

/* The next in-order data segment of @fl. */
static size_t next_data(uint8_t *f, struct flow *fl, size_t plen, uint8_t flags)
{
	struct segspec sp = { .seq = fl->seq, .ack = 7000000, .window = 502, .ipid = fl->ipid,
			      .flags = flags, .ttl = 64, .plen = plen, .pad = 1 };
	size_t n = build_seg(f, fl, &sp);

	fl->seq += (uint32_t)plen;
	fl->ipid++;
	return n;
}

static int tcp_frame_ok(const uint8_t *f, size_t len)
{
	return vn_verify(f, len) == 1;
}

static struct vn_rsc *new_rsc(uint8_t mode, uint64_t interval, uint32_t max_bytes,
			      uint32_t flows)
{
	struct vn_rsc_cfg cfg = { .interval_ns = interval, .max_bytes = max_bytes,
				  .max_flows = flows, .mode = mode, .data_valid = 1, .ipv4 = 1,
				  .ipv6 = 1 };
	struct vn_rsc *r = NULL;

	if (!CHECK(vn_rsc_new(&cfg, &r) == 0))
		exit(1);
	return r;
}

/* ---- part 1: behaviour --------------------------------------------------- */

static void test_bulk_gso(int version)
{
	struct vn_rsc *r = new_rsc(VN_RSC_MODE_GSO, 1000 * US, VN_RSC_MAX_BYTES, 0);
	struct flow fl = { .version = version, .sport = 40000, .seq = 1000, .ipid = 10 };
	static uint8_t in[46][SEG_MAX];
	size_t lens[46], l4 = 14 + (version == 4 ? 20 : 40);
	struct vn_rsc_out out[OUT_MAX];
	uint32_t seg_lens[64];
	uint8_t *arena = tl_xmalloc(70000 + 64 * 128);
	int i, n = 0, k;

	for (i = 0; i < 46; i++) {
		lens[i] = next_data(in[i], &fl, MSS, 0x10);
		n = vn_rsc_push(r, NULL, in[i], lens[i], 0, out, OUT_MAX);
		CHECK(n == (i == 45 ? 1 : 0));
	}
	/* The 46th segment would grow the IP packet past 65535: unit of 45 out. */
	CHECK(out[0].kind == VN_RSC_OUT_UNIT && out[0].segs == 45);
	CHECK(out[0].hdr.flags == VN_HDR_F_NEEDS_CSUM);
	CHECK(out[0].hdr.gso_type == (version == 4 ? VN_GSO_TCPV4 : VN_GSO_TCPV6));
	CHECK(out[0].hdr.gso_size == MSS && out[0].hdr.csum_start == l4);
	CHECK(out[0].hdr.csum_offset == 16 && out[0].hdr.hdr_len == l4 + 20);
	CHECK(out[0].len == l4 + 20 + 45 * MSS);
	CHECK(tl_get_be16(out[0].data + l4 + 16) ==
	      pseudo_ref(out[0].data + 14, version, out[0].len - l4));
	if (version == 4)
		CHECK(tl_ref_sum(out[0].data + 14, 20, 0) == 0xffff);
	k = vn_segment(&out[0].hdr, out[0].data, out[0].len, 0, arena, 70000 + 64 * 128,
		       seg_lens, 64);
	CHECK(k == 45);
	{
		size_t pos = 0;

		for (i = 0; i < k && i < 45; i++) {
			CHECK(seg_lens[i] == lens[i] && memcmp(arena + pos, in[i], lens[i]) == 0);
			pos += seg_lens[i];
		}
	}
	n = vn_rsc_flush(r, out, OUT_MAX);
	CHECK(n == 1 && out[0].segs == 1 && out[0].len == lens[45] &&
	      memcmp(out[0].data, in[45], lens[45]) == 0);
	CHECK(out[0].hdr.flags == VN_HDR_F_DATA_VALID && out[0].hdr.gso_type == 0);
	free(arena);
	vn_rsc_free(r);
}

static void test_rsc_mode(void)
{
	struct vn_rsc *r = new_rsc(VN_RSC_MODE_RSC, 1000 * US, VN_RSC_MAX_BYTES, 0);
	struct flow fl = { .version = 4, .sport = 40001, .seq = 5, .ipid = 1 };
	uint8_t f[SEG_MAX];
	struct vn_rsc_out out[OUT_MAX];
	struct segspec ack = { .ack = 7000000, .window = 502, .flags = 0x10, .ttl = 64,
			       .pad = 1 };
	int i, n;

	for (i = 0; i < 5; i++)
		CHECK(vn_rsc_push(r, NULL, f, next_data(f, &fl, 1001, 0x10), 0, out,
				  OUT_MAX) == 0);
	for (i = 0; i < 2; i++) {       /* duplicate ACKs: absorbed and counted */
		ack.seq = fl.seq;
		ack.ipid = fl.ipid++;
		CHECK(vn_rsc_push(r, NULL, f, build_seg(f, &fl, &ack), 0, out, OUT_MAX) == 0);
	}
	n = vn_rsc_push(r, NULL, f, next_data(f, &fl, 333, 0x18), 0, out, OUT_MAX);
	CHECK(n == 1 && out[0].kind == VN_RSC_OUT_UNIT);
	CHECK(out[0].hdr.flags == (VN_HDR_F_RSC_INFO | VN_HDR_F_DATA_VALID));
	CHECK(out[0].hdr.csum_start == 6 && out[0].hdr.csum_offset == 2);
	CHECK(out[0].hdr.gso_size == 1001 && out[0].hdr.gso_type == VN_GSO_TCPV4);
	CHECK(out[0].len == 14 + 40 + 5 * 1001 + 333);
	CHECK(tcp_frame_ok(out[0].data, out[0].len));
	CHECK(tl_ref_sum(out[0].data + 14 + 20, out[0].len - 34,
		      pseudo_ref(out[0].data + 14, 4, out[0].len - 34)) == 0xffff);
	vn_rsc_free(r);
}

static void test_timer(void)
{
	struct vn_rsc *r = new_rsc(VN_RSC_MODE_GSO, 300 * US, VN_RSC_MAX_BYTES, 0);
	struct flow fl = { .version = 6, .sport = 40002, .seq = 1 };
	uint8_t f[SEG_MAX];
	struct vn_rsc_out out[OUT_MAX];
	uint64_t dl = 0;
	int i;

	CHECK(vn_rsc_deadline(r, &dl) == 0);
	for (i = 0; i < 3; i++)
		CHECK(vn_rsc_push(r, NULL, f, next_data(f, &fl, MSS, 0x10), (uint64_t)i * 100 * US,
				  out, OUT_MAX) == 0);
	CHECK(vn_rsc_deadline(r, &dl) == 1 && dl == 300 * US);
	CHECK(vn_rsc_poll(r, 300 * US - 1, out, OUT_MAX) == 0);
	CHECK(vn_rsc_poll(r, 300 * US, out, OUT_MAX) == 1 && out[0].segs == 3);
	CHECK(vn_rsc_deadline(r, &dl) == 0 && vn_rsc_held(r) == 0);
	for (i = 3; i < 6; i++)
		CHECK(vn_rsc_push(r, NULL, f, next_data(f, &fl, MSS, 0x10), (uint64_t)i * 100 * US,
				  out, OUT_MAX) == 0);
	/* No poll: the flow's next segment finds its unit's time up. */
	CHECK(vn_rsc_push(r, NULL, f, next_data(f, &fl, MSS, 0x10), 600 * US, out,
			  OUT_MAX) == 1 && out[0].segs == 3);
	CHECK(vn_rsc_poll(r, 0, NULL, 0) == 0);
	{
		struct vn_rsc_stats st;

		vn_rsc_get_stats(r, &st);
		CHECK(st.timer_flushes == 2 && st.received == 7 && st.coalesced == 4);
	}
	vn_rsc_free(r);
}

static void test_bypass_and_finalize(void)
{
	struct vn_rsc *r = new_rsc(VN_RSC_MODE_GSO, 1000 * US, VN_RSC_MAX_BYTES, 0);
	struct flow fl = { .version = 4, .sport = 40003, .seq = 1 };
	uint8_t f[SEG_MAX], arp[42] = { 0 };
	struct vn_rsc_out out[OUT_MAX];
	struct vn_net_hdr gso = { .gso_type = VN_GSO_TCPV4, .gso_size = 100 };
	struct vn_rsc_stats st;
	size_t n;
	int k;

	tl_put_be16(arp + 12, 0x0806);
	k = vn_rsc_push(r, NULL, arp, sizeof(arp), 0, out, OUT_MAX);
	CHECK(k == 1 && out[0].kind == VN_RSC_OUT_BYPASS && out[0].data == arp);
	CHECK(vn_rsc_push(r, NULL, f, next_data(f, &fl, MSS, 0x10), 0, out, OUT_MAX) == 0);
	n = next_data(f, &fl, MSS, 0x11);       /* FIN: the unit, then the segment */
	k = vn_rsc_push(r, NULL, f, n, 0, out, OUT_MAX);
	CHECK(k == 2 && out[0].kind == VN_RSC_OUT_UNIT && out[1].kind == VN_RSC_OUT_SEGMENT);
	CHECK(out[1].data == f && out[1].len == n);
	n = next_data(f, &fl, MSS, 0x10);
	k = vn_rsc_push(r, &gso, f, n, 0, out, OUT_MAX);
	CHECK(k == 1 && out[0].kind == VN_RSC_OUT_BYPASS && out[0].hdr.gso_size == 100);
	n = next_data(f, &fl, 10, 0x10);
	f[n - 1] ^= 1;                          /* bad TCP checksum */
	k = vn_rsc_push(r, NULL, f, n, 0, out, OUT_MAX);
	CHECK(k == 1 && out[0].kind == VN_RSC_OUT_BYPASS);
	vn_rsc_get_stats(r, &st);
	CHECK(st.bypass_not_ip == 1 && st.final_fin == 1 && st.bypass_offloaded == 1);
	CHECK(st.bypass_bad_csum == 1 && st.delivered == 5);
	vn_rsc_free(r);
}

static void test_eviction(void)
{
	struct vn_rsc *r = new_rsc(VN_RSC_MODE_GSO, 1000 * US, VN_RSC_MAX_BYTES, 0);
	struct flow fl[VN_RSC_MAX_FLOWS + 1];
	uint8_t f[SEG_MAX];
	struct vn_rsc_out out[OUT_MAX];
	int i, k;

	for (i = 0; i <= VN_RSC_MAX_FLOWS; i++) {
		fl[i] = (struct flow){ .version = 4 + 2 * (i & 1), .sport = (uint16_t)(1000 + i),
				       .seq = 1 };
		k = vn_rsc_push(r, NULL, f, next_data(f, &fl[i], 500, 0x10), (uint64_t)i, out,
				OUT_MAX);
		CHECK(k == (i == VN_RSC_MAX_FLOWS ? 1 : 0));
	}
	CHECK(tl_get_be16(out[0].data + 14 + 20) == 1000);     /* the least recently used */
	CHECK(vn_rsc_held(r) == VN_RSC_MAX_FLOWS);
	CHECK(vn_rsc_flush(r, out, 10) == 10);
	CHECK(vn_rsc_flush(r, out, OUT_MAX) == VN_RSC_MAX_FLOWS - 10);
	CHECK(vn_rsc_flush(r, out, OUT_MAX) == 0);
	vn_rsc_free(r);
}

static size_t copy_out(uint8_t *dst, size_t pos, const struct vn_rsc_out *o, int k)
{
	int j;

	for (j = 0; j < k; j++) {
		memcpy(dst + pos, o[j].data, o[j].len);
		pos += o[j].len;
	}
	return pos;
}

/* push_batch with times equals push + poll; a small arena only slows it. */
static void test_batch(void)
{
	struct vn_rsc *a = new_rsc(VN_RSC_MODE_GSO, 250 * US, 20000, 4);
	struct vn_rsc *b = new_rsc(VN_RSC_MODE_GSO, 250 * US, 20000, 4);
	enum { N = 120 };
	static uint8_t frames[N][SEG_MAX];
	struct vn_rsc_batch_in in[N];
	struct flow fl[3] = { { 4, 0, 1, 1, 1 }, { 6, 1, 2, 1, 1 }, { 4, 2, 3, 1, 1 } };
	struct vn_rsc_out bout[2 * N + 8], out[OUT_MAX];
	size_t cap = 200000, used_b = 0;
	uint8_t *arena = tl_xmalloc(cap), *single = tl_xmalloc(N * 2 * 21000);
	uint32_t consumed, done = 0, nb = 0;
	size_t pos = 0;
	int i, k, j, ok = 1;

	memset(in, 0, sizeof(in));
	for (i = 0; i < N; i++) {
		in[i].frame = frames[i];
		in[i].len = (uint32_t)next_data(frames[i], &fl[i % 3], i % 7 ? MSS : 600, 0x10);
		in[i].now_ns = (uint64_t)i * 40 * US;
	}
	/* Single calls, outputs copied out as they come. */
	for (i = 0; i < N; i++) {
		k = vn_rsc_poll(b, in[i].now_ns, out, OUT_MAX);
		pos = copy_out(single, pos, out, k);
		k = vn_rsc_push(b, NULL, in[i].frame, in[i].len, in[i].now_ns, out, OUT_MAX);
		pos = copy_out(single, pos, out, k);
	}
	/* Batches into an arena too small for many frames at once. */
	while (done < N) {
		k = vn_rsc_push_batch(a, in + done, N - done, bout, 2 * N + 8, arena, cap,
				      &consumed);
		CHECK(k >= 0 && consumed > 0);
		if (k < 0 || !consumed)
			break;
		for (j = 0; j < k; j++) {
			ok &= used_b + bout[j].len <= pos &&
				memcmp(single + used_b, bout[j].data, bout[j].len) == 0;
			used_b += bout[j].len;
		}
		done += consumed;
		nb++;
	}
	CHECK(ok && used_b == pos && nb > 1);
	CHECK(vn_rsc_push_batch(a, in, 1, bout, 1, arena, cap, &consumed) == 0 && consumed == 0);
	free(arena);
	free(single);
	vn_rsc_free(a);
	vn_rsc_free(b);
}

/* ---- part 2: refusals ---------------------------------------------------- */

static void test_refusals(void)
{
	struct vn_rsc_cfg good = { .interval_ns = 1, .max_bytes = VN_RSC_MAX_BYTES,
				   .ipv4 = 1, .ipv6 = 1 };
	struct vn_rsc_cfg bad;
	struct vn_rsc *r = NULL;
	struct vn_rsc_out out[2];
	uint32_t consumed;

	bad = good, bad.interval_ns = 0;
	CHECK(vn_rsc_new(&bad, &r) == -EINVAL);
	bad = good, bad.max_bytes = VN_RSC_MIN_BYTES - 1;
	CHECK(vn_rsc_new(&bad, &r) == -EINVAL);
	bad = good, bad.max_bytes = VN_RSC_MAX_BYTES + 1;
	CHECK(vn_rsc_new(&bad, &r) == -EINVAL);
	bad = good, bad.max_flows = VN_RSC_MAX_FLOWS + 1;
	CHECK(vn_rsc_new(&bad, &r) == -EINVAL);
	bad = good, bad.mode = 2;
	CHECK(vn_rsc_new(&bad, &r) == -EINVAL);
	CHECK(vn_rsc_new(NULL, &r) == -EINVAL && vn_rsc_new(&good, NULL) == -EINVAL);
	CHECK(vn_rsc_new(&good, &r) == 0);
	CHECK(vn_rsc_push(r, NULL, (const uint8_t *)"x", 1, 0, out, 1) == -ENOSPC);
	CHECK(vn_rsc_push(r, NULL, NULL, 5, 0, out, 2) == -EINVAL);
	CHECK(vn_rsc_push(NULL, NULL, NULL, 0, 0, out, 2) == -EINVAL);
	CHECK(vn_rsc_push(r, NULL, NULL, 0, 0, out, 2) == 1 && out[0].len == 0);
	CHECK(vn_rsc_poll(NULL, 0, out, 2) == -EINVAL && vn_rsc_flush(r, NULL, 3) == -EINVAL);
	CHECK(vn_rsc_push_batch(r, NULL, 1, out, 2, NULL, 0, &consumed) == -EINVAL);
	CHECK(vn_rsc_deadline(NULL, NULL) == 0 && vn_rsc_held(NULL) == 0);
	vn_rsc_get_stats(NULL, NULL);
	vn_rsc_free(NULL);
	vn_rsc_free(r);
}

/* ---- part 3: fuzz -------------------------------------------------------- */

struct fz_in {
	uint8_t *frame;         /* exact-size heap copy */
	size_t len;
	int used;               /* accounted for by an output */
};

static size_t fuzz_segment(uint8_t *f, struct flow *fl)
{
	static const size_t sizes[] = { 0, 1, 5, 100, 999, 1447, MSS, MSS, MSS, MSS, 4000 };
	static const uint8_t flags[] = { 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x18, 0x11, 0x14,
					 0x30, 0x50, 0x90, 0x02, 0x00 };
	struct segspec sp = { .seq = fl->seq, .ack = 7000000, .window = 502, .ipid = fl->ipid,
			      .ttl = 64, .pad = 1 };
	uint32_t r = tl_rnd_below(100);
	size_t n;

	sp.plen = sizes[tl_rnd_below(sizeof(sizes) / sizeof(sizes[0]))];
	sp.flags = flags[tl_rnd_below(sizeof(flags))];
	sp.opts = tl_rnd_below(4) == 0;
	sp.tsval = tl_rnd_below(3);
	if (r < 4)
		sp.seq -= MSS;
	else if (r < 8)
		sp.seq += MSS;
	else if (r < 10)
		sp.ack += tl_rnd_below(3) * 100;
	else if (r < 12)
		sp.window = 9;
	else if (r < 14)
		sp.ttl = 1;
	else if (r < 17)
		sp.bad_csum = 1;
	else if (r < 20)
		sp.ipid = 0x4242;
	n = build_seg(f, fl, &sp);
	if (sp.seq == fl->seq)
		fl->seq += (uint32_t)sp.plen;
	fl->ipid++;
	return n;
}

static size_t fuzz_mutate(uint8_t *f, size_t n)
{
	int k = 1 + (int)tl_rnd_below(4);

	while (k--) {
		uint32_t what = tl_rnd_below(10);

		if (what < 6 && n)
			f[tl_rnd_below((uint32_t)(n < 80 ? n : 80))] = (uint8_t)tl_rnd();
		else if (what < 8)
			n = tl_rnd_below((uint32_t)n + 1);
		else
			while (n < SEG_MAX - 1 && tl_rnd_below(8))
				f[n++] = (uint8_t)tl_rnd();
	}
	return n;
}

/* Mark the input @data/@len came from as used (it must be exactly one of them). */
static void account_frame(struct fz_in *in, int n_in, const uint8_t *data, size_t len)
{
	int i;

	for (i = 0; i < n_in; i++) {
		if (!in[i].used && in[i].len == len && memcmp(in[i].frame, data, len) == 0) {
			in[i].used = 1;
			fz_frames++;
			return;
		}
	}
	CHECK(!"output frame matches no unused input");
}

static void account(struct fz_in *in, int n_in, const struct vn_rsc_out *o, uint8_t *arena,
		    size_t arena_cap, uint32_t *seg_lens)
{
	int k, i;
	size_t pos = 0;

	if (o->kind != VN_RSC_OUT_UNIT || !o->hdr.gso_type) {
		account_frame(in, n_in, o->data, o->len);
		return;
	}
	CHECK(o->len <= 22 + VN_RSC_MAX_BYTES && o->segs >= 2);
	k = vn_segment(&o->hdr, o->data, o->len, 0, arena, arena_cap, seg_lens, 128);
	if (!CHECK(k == o->segs))
		return;
	fz_units++;
	for (i = 0; i < k; i++) {
		CHECK(tcp_frame_ok(arena + pos, seg_lens[i]));
		account_frame(in, n_in, arena + pos, seg_lens[i]);
		pos += seg_lens[i];
	}
}

static void fuzz_stream(uint8_t *arena, size_t arena_cap, uint32_t *seg_lens)
{
	struct vn_rsc *r = new_rsc(VN_RSC_MODE_GSO, 300 * US, VN_RSC_MIN_BYTES + tl_rnd_below(
					   VN_RSC_MAX_BYTES - VN_RSC_MIN_BYTES + 1),
				   1 + tl_rnd_below(4));
	struct fz_in in[FUZZ_STREAM_MAX];
	struct flow fl[3];
	struct vn_rsc_out out[OUT_MAX];
	static uint8_t f[SEG_MAX];
	int n_in = 1 + (int)tl_rnd_below(FUZZ_STREAM_MAX), i, j, k;
	uint64_t t = 0;

	for (i = 0; i < 3; i++)
		fl[i] = (struct flow){ .version = tl_rnd_below(2) ? 4 : 6, .vlans = (int)tl_rnd_below(3),
				       .sport = (uint16_t)(7 + i), .seq = (uint32_t)tl_rnd(),
				       .ipid = (uint16_t)tl_rnd() };
	for (i = 0; i < n_in; i++) {
		size_t n = fuzz_segment(f, &fl[tl_rnd_below(3)]);
		uint32_t what = tl_rnd_below(100);

		if (what < 8) {
			n = fuzz_mutate(f, n);
		} else if (what < 10) {
			n = tl_rnd_below(120);
			for (j = 0; j < (int)n; j++)
				f[j] = (uint8_t)tl_rnd();
		}
		in[i].frame = tl_xmalloc(n);
		memcpy(in[i].frame, f, n);
		in[i].len = n;
		in[i].used = 0;
		t += (uint64_t)tl_rnd_below(5) * 100 * US;
		if (tl_rnd_below(4) == 0) {
			k = vn_rsc_poll(r, t, out, 1 + tl_rnd_below(OUT_MAX - 1));
			for (j = 0; j < k; j++)
				account(in, i, &out[j], arena, arena_cap, seg_lens);
		}
		k = vn_rsc_push(r, NULL, in[i].frame, n, t, out, OUT_MAX);
		CHECK(k >= 0 && k <= VN_RSC_PUSH_MAX_OUT);
		for (j = 0; j < k; j++) {
			if (out[j].kind != VN_RSC_OUT_UNIT)
				CHECK(out[j].data == in[i].frame && out[j].len == n);
			account(in, i + 1, &out[j], arena, arena_cap, seg_lens);
		}
	}
	while ((k = vn_rsc_flush(r, out, 1 + tl_rnd_below(OUT_MAX - 1))) > 0)
		for (j = 0; j < k; j++)
			account(in, n_in, &out[j], arena, arena_cap, seg_lens);
	for (i = 0; i < n_in; i++) {
		CHECK(in[i].used);
		free(in[i].frame);
	}
	vn_rsc_free(r);
}

/* Input frames an output carries: an rsc unit its segments and absorbed ACKs. */
static unsigned long carries(const struct vn_rsc_out *o)
{
	if (o->kind == VN_RSC_OUT_UNIT && (o->hdr.flags & VN_HDR_F_RSC_INFO))
		return (unsigned long)o->hdr.csum_start + o->hdr.csum_offset;
	return 1;
}

/* rsc mode with random input headers (trusted, offloaded, garbage): no
 * crash, and every input is carried by exactly one output (absorbed
 * duplicate ACKs counted in their unit's csum_offset). */
static void fuzz_stream_rsc(void)
{
	struct vn_rsc *r = new_rsc(VN_RSC_MODE_RSC, 300 * US, VN_RSC_MAX_BYTES, 2);
	struct flow fl[2] = { { 4, 0, 1, 1, 1 }, { 6, 1, 2, 1, 1 } };
	struct vn_rsc_out out[OUT_MAX];
	static uint8_t f[SEG_MAX];
	unsigned long carried = 0;
	int n_in = 1 + (int)tl_rnd_below(FUZZ_STREAM_MAX), i, j, k;

	for (i = 0; i < n_in; i++) {
		size_t n = fuzz_segment(f, &fl[tl_rnd_below(2)]);
		struct vn_net_hdr h = { .flags = (uint8_t)tl_rnd(), .gso_type = (uint8_t)tl_rnd() };
		const struct vn_net_hdr *hp = NULL;
		uint8_t *copy;

		if (tl_rnd_below(8) == 0)
			n = fuzz_mutate(f, n);
		if (tl_rnd_below(3) == 0) {
			if (tl_rnd_below(2))
				h = (struct vn_net_hdr){ .flags = VN_HDR_F_DATA_VALID };
			hp = &h;
		}
		copy = tl_xmalloc(n);
		memcpy(copy, f, n);
		k = vn_rsc_push(r, hp, copy, n, (uint64_t)i * 100 * US, out, OUT_MAX);
		for (j = 0; j < k; j++)
			carried += carries(&out[j]);
		free(copy);
	}
	while ((k = vn_rsc_flush(r, out, OUT_MAX)) > 0)
		for (j = 0; j < k; j++)
			carried += carries(&out[j]);
	CHECK(carried == (unsigned long)n_in);
	vn_rsc_free(r);
}

int main(int argc, char **argv)
{
	unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 0) : FUZZ_ITERS_DEFAULT;
	size_t arena_cap = 70000 + 128 * 128;
	uint8_t *arena = tl_xmalloc(arena_cap);
	uint32_t seg_lens[128];

	tl.rng = argc > 2 ? strtoull(argv[2], NULL, 0) : FUZZ_SEED_DEFAULT;
	test_bulk_gso(4);
	test_bulk_gso(6);
	test_rsc_mode();
	test_timer();
	test_bypass_and_finalize();
	test_eviction();
	test_batch();
	test_refusals();
	tl.in_fuzz = 1;
	for (tl.fuzz_iter = 0; tl.fuzz_iter < iters; tl.fuzz_iter++) {
		fuzz_stream(arena, arena_cap, seg_lens);
		if (tl.fuzz_iter % 4 == 0)
			fuzz_stream_rsc();
	}
	free(arena);
	printf("test_rsc: %lu checks, %lu failed, %lu fuzz streams (%lu frames accounted for, "
	       "%lu coalesced units split back)\n", tl.checks, tl.fails, iters, fz_frames, fz_units);
	return tl.fails ? 1 : 0;
}
