/*
 * test_packed.c - packed virtqueues (VIRTIO_F_RING_PACKED): TX drain, RX fill,
 * wrap counters, event suppression, GET/SET_VRING_BASE, driven by a fake
 * guest driver written here from the spec (virtio 1.3, 2.8), hostile rings
 * included.
 *
 * Build (also under -fsanitize=address,undefined):
 *   cc -Icsrc -DVN_VERSION='"t"' csrc/tests/test_packed.c csrc/vn_*.c -o t && ./t
 *
 * The guest's RAM is a memfd mapped twice: by vn_mem (as the device process
 * would) and by this test (as the guest driver).  A SOCK_SEQPACKET
 * socketpair stands in for the tap (one writev one packet); real taps and a
 * real driver (DPDK virtio_user with packed_vq=1) are in the Python tests.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vn_mem.h"
#include "vn_netq.h"
#include "vn_vring.h"

#define TL_FAKE_GUEST
#include "testlib.h"

#define GPA_A 0x100000ULL
#define SIZE_A (8ULL << 20)
#define UADDR_A 0x7f0000000000ULL
#define RING_DESC (GPA_A + 0x0000)              /* up to 32768 x 16 bytes */
#define DRIVER_EV (GPA_A + 0x80000)
#define DEVICE_EV (GPA_A + 0x80010)
#define DATA_START (GPA_A + 0x90000)

#define HDR 12
#define F_EVENT_IDX (1ULL << VN_F_RING_EVENT_IDX)
#define F_INDIRECT (1ULL << VN_F_RING_INDIRECT_DESC)
#define F_PACKED (1ULL << VN_F_RING_PACKED)
#define D_NEXT VN_VRING_DESC_F_NEXT
#define D_WRITE VN_VRING_DESC_F_WRITE
#define D_IND VN_VRING_DESC_F_INDIRECT
#define D_AVAIL VN_VRING_PACKED_DESC_F_AVAIL
#define D_USED VN_VRING_PACKED_DESC_F_USED
#define MAX_IDS 32768

/* The fake driver's view of one packed ring. */
struct guest {
	struct tl_fake_host h;  /* RAM from GPA_A, memory table, fake tap, call fd */
	struct vn_vring *vq;
	uint32_t num;
	uint32_t avail_slot, avail_wrap;        /* next slot to make available */
	uint32_t used_slot, used_wrap;          /* next used descriptor to read */
	uint16_t next_id;
	uint16_t ndesc_of[MAX_IDS];             /* slots each buffer id took */
	uint64_t data_next;
	struct vn_stats st;
};

/* One buffer of a chain the fake driver adds. */
struct buf {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;         /* D_WRITE, D_IND (extra NEXT for hostile cases) */
};

static uint8_t *G(struct guest *g, uint64_t gpa)
{
	return g->h.ram + (gpa - GPA_A);
}

static uint64_t uaddr_of(uint64_t gpa)
{
	return UADDR_A + (gpa - GPA_A);
}

/* Write a packed descriptor {addr, len, id, flags} at @table[@i]. */
static void desc_put(struct guest *g, uint64_t table, uint32_t i, uint64_t addr, uint32_t len,
		     uint16_t id, uint16_t flags)
{
	uint8_t *d = G(g, table + (uint64_t)i * 16);

	tl_put_le64(d, addr);
	tl_put_le32(d + 8, len);
	tl_put_le16(d + 12, id);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	tl_put_le16(d + 14, flags);
}

static uint16_t avail_bits(uint32_t wrap)
{
	return wrap ? D_AVAIL : D_USED;
}

static uint64_t alloc_buf(struct guest *g, uint64_t len)
{
	return tl_bump_alloc(&g->data_next, len, GPA_A + SIZE_A);
}

static uint64_t buf_with(struct guest *g, const void *data, uint32_t len)
{
	uint64_t a = alloc_buf(g, len);

	memcpy(G(g, a), data, len);
	return a;
}

/*
 * Make a chain of @n buffers available with buffer id @id (in every
 * descriptor, as Linux does): the head's flags are written last.  Return
 * the head slot.
 */
static uint32_t add_chain_id(struct guest *g, const struct buf *b, int n, uint16_t id)
{
	uint32_t head = g->avail_slot, head_wrap = g->avail_wrap, slot = head, wrap = head_wrap;
	int i;

	for (i = 0; i < n; i++) {
		uint16_t fl = (uint16_t)(b[i].flags | (i + 1 < n ? D_NEXT : 0) | avail_bits(wrap));

		/* The head's flags (still those of the last pass) are written last. */
		desc_put(g, RING_DESC, slot, b[i].addr, b[i].len, id, i > 0 ? fl : 0);
		if (++slot == g->num) {
			slot = 0;
			wrap ^= 1;
		}
	}
	g->ndesc_of[id] = (uint16_t)n;
	g->avail_slot = slot;
	g->avail_wrap = wrap;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	tl_put_le16(G(g, RING_DESC + (uint64_t)head * 16 + 14),
	      (uint16_t)(b[0].flags | (n > 1 ? D_NEXT : 0) | avail_bits(head_wrap)));
	return head;
}

static uint16_t new_id(struct guest *g)
{
	uint16_t id = g->next_id;

	g->next_id = (uint16_t)((g->next_id + 1) % g->num);
	return id;
}

static uint32_t add_chain(struct guest *g, const struct buf *b, int n)
{
	return add_chain_id(g, b, n, new_id(g));
}

/* Read the next used descriptor; 0 when there is none. */
static int get_used(struct guest *g, uint16_t *id, uint32_t *len)
{
	const uint8_t *d = G(g, RING_DESC + (uint64_t)g->used_slot * 16);
	uint16_t fl = tl_get_le16(d + 14);
	uint32_t i;

	if (((fl & D_AVAIL) != 0) != g->used_wrap || ((fl & D_USED) != 0) != g->used_wrap)
		return 0;
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	*id = tl_get_le16(d + 12);
	*len = tl_get_le32(d + 8);
	for (i = 0; i < g->ndesc_of[*id % MAX_IDS] && i < g->num; i++) {
		if (++g->used_slot == g->num) {
			g->used_slot = 0;
			g->used_wrap ^= 1;
		}
	}
	return 1;
}

static int setup(struct guest *g, uint16_t base, uint64_t features)
{
	return vn_vring_setup(g->vq, g->h.mem, g->num, uaddr_of(RING_DESC), uaddr_of(DRIVER_EV),
			      uaddr_of(DEVICE_EV), base, features);
}

static struct guest *guest_new(uint32_t num, uint64_t features)
{
	struct guest *g = calloc(1, sizeof(*g));

	if (!g)
		abort();
	tl_fake_host_init(&g->h, "vn-test-packed", SIZE_A);
	CHECK_EQ(vn_mem_map_region(g->h.mem, g->h.memfd, GPA_A, SIZE_A, UADDR_A, 0), 0);
	g->vq = vn_vring_new();
	g->num = num;
	g->avail_wrap = g->used_wrap = 1;      /* wrap counters start at 1 (2.8.1) */
	g->data_next = DATA_START;
	CHECK_EQ(setup(g, (uint16_t)(1u << VN_VRING_PACKED_WRAP_BIT), features | F_PACKED), 0);
	g->vq->call_fd = g->h.call;
	return g;
}

static void guest_free(struct guest *g)
{
	vn_vring_free(g->vq);
	tl_fake_host_free(&g->h);
	free(g);
}

static int calls(struct guest *g)
{
	return tl_fake_host_calls(&g->h);
}

static void drain_peer(struct guest *g)
{
	uint8_t sink[70000];

	while (read(g->h.peer, sink, sizeof(sink)) > 0)
		;
}

static const struct vn_txcfg TX_VNET = { .hdr_sz = HDR, .tap_has_vnet_hdr = 1,
	.tap_offloads = VN_TUN_F_CSUM | VN_TUN_F_TSO4 | VN_TUN_F_TSO6 };
static const struct vn_rxcfg RX_MRG = { .hdr_sz = HDR, .tap_has_vnet_hdr = 1, .mrg_rxbuf = 1 };

/* A plain Ethernet frame of @len bytes (the tap pair does not parse it). */
static void make_frame(uint8_t *f, size_t len, uint8_t seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		f[i] = (uint8_t)(seed + i * 7);
	memset(f, 0xff, 6);                     /* broadcast */
	f[12] = 0x88;                           /* an ethertype nobody validates */
	f[13] = 0xb5;
}

/* Queue a TX packet: a zero header and @flen bytes of frame, over @pieces buffers. */
static void tx_packet(struct guest *g, size_t flen, uint8_t seed, int pieces)
{
	uint8_t pkt[HDR + 2048];
	struct buf b[4];
	size_t total = HDR + flen, at = 0;
	int i;

	memset(pkt, 0, HDR);
	make_frame(pkt + HDR, flen, seed);
	for (i = 0; i < pieces; i++) {
		size_t l = i + 1 < pieces ? total / (size_t)pieces : total - at;

		b[i].addr = buf_with(g, pkt + at, (uint32_t)l);
		b[i].len = (uint32_t)l;
		b[i].flags = 0;
		at += l;
	}
	add_chain(g, b, pieces);
}

/* ---- TX ---- */

static void test_tx_basic(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t out[4096], want[2048];
	uint16_t id;
	uint32_t len;

	tx_packet(g, 64, 1, 1);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	make_frame(want, 64, 1);
	CHECK_EQ(read(g->h.peer, out, sizeof(out)), HDR + 64);
	CHECK(memcmp(out + HDR, want, 64) == 0);
	CHECK(get_used(g, &id, &len));
	CHECK_EQ(id, 0);
	CHECK_EQ(len, 0);
	CHECK(!get_used(g, &id, &len));
	CHECK_EQ(g->st.packets, 1);
	CHECK_EQ(calls(g), 1);
	/* A chain of three, 1514 bytes; its id comes from the last descriptor. */
	{
		uint8_t pkt[HDR + 1514];
		struct buf b[3];

		memset(pkt, 0, HDR);
		make_frame(pkt + HDR, 1514, 9);
		b[0] = (struct buf){ buf_with(g, pkt, 5), 5, 0 };
		b[1] = (struct buf){ buf_with(g, pkt + 5, 500), 500, 0 };
		b[2] = (struct buf){ buf_with(g, pkt + 505, HDR + 1514 - 505), HDR + 1514 - 505, 0 };
		add_chain_id(g, b, 3, 77);
		/* Only the last descriptor's id counts: scribble the others'. */
		tl_put_le16(G(g, RING_DESC + 1 * 16 + 12), 5);
		tl_put_le16(G(g, RING_DESC + 2 * 16 + 12), 6);
		CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
		CHECK_EQ(read(g->h.peer, out, sizeof(out)), HDR + 1514);
		CHECK(memcmp(out, pkt, HDR + 1514) == 0);
		CHECK(get_used(g, &id, &len));
		CHECK_EQ(id, 77);
		CHECK_EQ(g->vq->last_used_idx, 2);
	}
	guest_free(g);
}

/* Many passes over small rings (one of size 5: packed sizes need not be powers
 * of two), chains crossing the ring's end, wrap counters flipping. */
static void test_tx_wrap(uint32_t num)
{
	struct guest *g = guest_new(num, 0);
	uint8_t out[4096], want[2048];
	int round, got = 0, most = num >= 6 ? 3 : 2;   /* 2 chains must fit the ring */

	for (round = 0; round < 40; round++) {
		uint16_t id;
		uint32_t len;
		int k, n = 1 + round % 2;       /* 1 or 2 chains per batch */

		for (k = 0; k < n; k++)
			tx_packet(g, 60 + (size_t)round, (uint8_t)round, 1 + (round + k) % most);
		CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), n);
		for (k = 0; k < n; k++) {
			make_frame(want, 60 + (size_t)round, (uint8_t)round);
			CHECK_EQ(read(g->h.peer, out, sizeof(out)), HDR + 60 + round);
			CHECK(memcmp(out + HDR, want, 60 + (size_t)round) == 0);
			CHECK(get_used(g, &id, &len));
			got++;
		}
		CHECK(!get_used(g, &id, &len));
		g->data_next = DATA_START;
	}
	CHECK_EQ(g->st.packets, got);
	CHECK_EQ(g->vq->broken, 0);
	guest_free(g);
}

static void test_tx_indirect(void)
{
	struct guest *g = guest_new(256, F_INDIRECT);
	uint8_t pkt[HDR + 1514], out[4096];
	uint64_t table = alloc_buf(g, 48);
	struct buf b;
	uint16_t id;
	uint32_t len;

	memset(pkt, 0, HDR);
	make_frame(pkt + HDR, 1514, 3);
	/* Table entries are used in order; NEXT in them is ignored (2.8.7). */
	desc_put(g, table, 0, buf_with(g, pkt, HDR), HDR, 0, D_NEXT);
	desc_put(g, table, 1, buf_with(g, pkt + HDR, 700), 700, 0, 0);
	desc_put(g, table, 2, buf_with(g, pkt + HDR + 700, 814), 814, 0, D_NEXT);
	b = (struct buf){ table, 48, D_IND };
	add_chain_id(g, &b, 1, 9);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(read(g->h.peer, out, sizeof(out)), HDR + 1514);
	CHECK(memcmp(out, pkt, HDR + 1514) == 0);
	CHECK(get_used(g, &id, &len));
	CHECK_EQ(id, 9);
	guest_free(g);
}

/* Bad buffers: the packet is dropped and counted, the chain returned. */
static void test_tx_bad_buffers(void)
{
	struct guest *g = guest_new(2048, 0);
	static struct buf many[VN_CHAIN_MAX_IOV + 8];
	struct buf b[2];
	uint16_t id;
	uint32_t len;
	int i;

	b[0] = (struct buf){ 0x1000, 100, 0 };              /* below guest memory */
	add_chain(g, b, 1);
	b[0] = (struct buf){ GPA_A + SIZE_A - 10, 100, 0 };  /* runs off its end */
	add_chain(g, b, 1);
	b[0] = (struct buf){ alloc_buf(g, 100), 100, D_WRITE };  /* TX writable */
	add_chain(g, b, 1);
	b[0] = (struct buf){ alloc_buf(g, 4), 4, 0 };       /* shorter than the header */
	add_chain(g, b, 1);
	for (i = 0; i < VN_CHAIN_MAX_IOV + 8; i++)          /* more pieces than iovecs */
		many[i] = (struct buf){ alloc_buf(g, 1), 1, 0 };
	add_chain(g, many, VN_CHAIN_MAX_IOV + 8);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 5);
	CHECK_EQ(g->st.drops[VN_DROP_DESC_ADDR], 2);
	CHECK_EQ(g->st.drops[VN_DROP_DIRECTION], 1);
	CHECK_EQ(g->st.drops[VN_DROP_HDR_SHORT], 1);
	CHECK_EQ(g->st.drops[VN_DROP_TOO_MANY_IOV], 1);
	CHECK_EQ(g->st.packets, 0);
	for (i = 0; i < 5; i++)
		CHECK(get_used(g, &id, &len));
	CHECK_EQ(g->vq->broken, 0);
	/* The ring still works. */
	tx_packet(g, 100, 4, 2);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(g->st.packets, 1);
	guest_free(g);
}

/* Wrong wrap counters make descriptors look not available: ignored, not broken. */
static void test_wrap_misuse(void)
{
	struct guest *g = guest_new(8, 0);
	uint64_t a = alloc_buf(g, 100);
	static const uint16_t bad[] = { 0, D_AVAIL | D_USED, D_USED };
	size_t i;

	memset(G(g, a), 0, 100);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		desc_put(g, RING_DESC, 0, a, 100, 0, bad[i]);
		CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 0);
		CHECK_EQ(vn_vring_avail_count(g->vq), 0);
	}
	CHECK_EQ(g->vq->broken, 0);
	/* The right one is taken. */
	desc_put(g, RING_DESC, 0, a, 100, 0, D_AVAIL);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	/* Our used descriptor (AVAIL|USED) is not taken again in the next pass. */
	CHECK_EQ(vn_vring_avail_count(g->vq), 0);
	drain_peer(g);
	guest_free(g);
}

/* ---- rings that are themselves inconsistent ---- */

struct broken_case {
	const char *name;
	uint64_t features;
	int reason;
	void (*build)(struct guest *g);
};

static void bc_id(struct guest *g)
{
	struct buf b = { alloc_buf(g, 64), 64, 0 };

	add_chain_id(g, &b, 1, (uint16_t)g->num);
}

static void bc_loop(struct guest *g)
{
	/* Every descriptor says NEXT: a chain longer than the ring. */
	struct buf b = { alloc_buf(g, 64), 64, D_NEXT };
	uint32_t i;

	for (i = 0; i < g->num; i++)
		desc_put(g, RING_DESC, i, b.addr, 64, 0, D_NEXT | D_AVAIL);
}

static void bc_indirect_feature(struct guest *g)
{
	struct buf b = { alloc_buf(g, 32), 32, D_IND };

	add_chain(g, &b, 1);
}

static void bc_indirect_in_chain(struct guest *g)
{
	struct buf b[2] = { { alloc_buf(g, 64), 64, 0 }, { alloc_buf(g, 32), 32, D_IND } };

	add_chain(g, b, 2);
}

static void bc_indirect_next(struct guest *g)
{
	struct buf b[2] = { { alloc_buf(g, 32), 32, D_IND }, { alloc_buf(g, 64), 64, 0 } };

	add_chain(g, b, 2);
}

static void bc_indirect_len(struct guest *g, uint32_t len)
{
	struct buf b = { alloc_buf(g, 16 * 2048), len, D_IND };

	add_chain(g, &b, 1);
}

static void bc_indirect_len_zero(struct guest *g)
{
	bc_indirect_len(g, 0);
}

static void bc_indirect_len_odd(struct guest *g)
{
	bc_indirect_len(g, 40);
}

static void bc_indirect_len_huge(struct guest *g)
{
	bc_indirect_len(g, 16 * (VN_MAX_INDIRECT + 1));
}

static void bc_indirect_nested(struct guest *g)
{
	uint64_t t = alloc_buf(g, 32);
	struct buf b = { t, 32, D_IND };

	desc_put(g, t, 0, alloc_buf(g, 64), 64, 0, 0);
	desc_put(g, t, 1, t, 32, 0, D_IND);
	add_chain(g, &b, 1);
}

static void bc_indirect_addr(struct guest *g)
{
	struct buf b = { GPA_A + SIZE_A - 16, 32, D_IND };

	add_chain(g, &b, 1);
}

static const struct broken_case broken_cases[] = {
	{ "buffer id >= num", 0, VN_RING_HEAD, bc_id },
	{ "chain longer than the ring", 0, VN_RING_LOOP, bc_loop },
	{ "indirect not negotiated", 0, VN_RING_INDIRECT_FEATURE, bc_indirect_feature },
	{ "indirect after a descriptor", F_INDIRECT, VN_RING_INDIRECT_NEXT, bc_indirect_in_chain },
	{ "indirect with NEXT", F_INDIRECT, VN_RING_INDIRECT_NEXT, bc_indirect_next },
	{ "indirect length 0", F_INDIRECT, VN_RING_INDIRECT_LEN, bc_indirect_len_zero },
	{ "indirect length 40", F_INDIRECT, VN_RING_INDIRECT_LEN, bc_indirect_len_odd },
	{ "indirect too long", F_INDIRECT, VN_RING_INDIRECT_LEN, bc_indirect_len_huge },
	{ "indirect nested", F_INDIRECT, VN_RING_INDIRECT_NESTED, bc_indirect_nested },
	{ "indirect outside memory", F_INDIRECT, VN_RING_INDIRECT_ADDR, bc_indirect_addr },
};

static void test_broken_rings(void)
{
	size_t i;

	for (i = 0; i < sizeof(broken_cases) / sizeof(broken_cases[0]); i++) {
		const struct broken_case *bc = &broken_cases[i];
		int rx;

		for (rx = 0; rx < 2; rx++) {
			struct guest *g = guest_new(16, bc->features);
			int rc;

			bc->build(g);
			if (rx)
				rc = vn_rx_fill(g->vq, g->h.mem, g->h.tap, &RX_MRG, &g->st, 64);
			else
				rc = vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64);
			if (rc != -EIO || g->vq->broken != bc->reason)
				fprintf(stderr, "case %s (%s): rc %d broken %d\n", bc->name,
					rx ? "rx" : "tx", rc, g->vq->broken);
			CHECK_EQ(rc, -EIO);
			CHECK_EQ(g->vq->broken, bc->reason);
			CHECK_EQ(g->st.ring_errors[bc->reason], 1);
			/* Broken stays broken until set up again. */
			CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), -EIO);
			CHECK_EQ(vn_vring_avail_count(g->vq), -1);
			vn_vring_reset(g->vq);
			/* Set up again on a cleaned ring (a setup looks at the ring:
			 * the same bad chain would break it again at once). */
			memset(G(g, RING_DESC), 0, 16 * g->num);
			CHECK_EQ(setup(g, 1u << VN_VRING_PACKED_WRAP_BIT, bc->features | F_PACKED), 0);
			CHECK_EQ(g->vq->broken, 0);
			drain_peer(g);
			guest_free(g);
		}
	}
}

/*
 * All num slots available and seen (an RX window holds them unconsumed),
 * then slot 0 made available again for the next pass before it came back:
 * it is not taken while the ring is full (never more in flight than num);
 * a bad id behind good chains waits until they are used, then breaks.
 */
static void test_in_flight_overflow(void)
{
	struct guest *g = guest_new(16, 0);
	struct buf b = { alloc_buf(g, 100), 100, D_WRITE };
	uint8_t pkt[HDR + 2000];
	uint32_t i;

	for (i = 0; i < g->num; i++)
		add_chain(g, &b, 1);
	CHECK_EQ(vn_vring_avail_count(g->vq), (int)g->num);
	desc_put(g, RING_DESC, 0, b.addr, 100, 0, D_USED | D_WRITE);
	memset(pkt, 0, sizeof(pkt));
	CHECK_EQ(write(g->h.peer, pkt, sizeof(pkt)), sizeof(pkt));
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &RX_MRG, &g->st, 64), -ENOBUFS);
	CHECK_EQ(vn_vring_avail_count(g->vq), (int)g->num);
	CHECK_EQ(g->vq->broken, 0);
	drain_peer(g);
	guest_free(g);

	g = guest_new(16, 0);
	tx_packet(g, 64, 1, 1);
	b.addr = alloc_buf(g, 100);
	b.flags = 0;
	add_chain_id(g, &b, 1, 16);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), -EIO);
	CHECK_EQ(g->st.packets, 1);
	CHECK_EQ(g->vq->broken, VN_RING_HEAD);
	CHECK_EQ(g->st.ring_errors[VN_RING_HEAD], 1);
	drain_peer(g);
	guest_free(g);
}

/* ---- RX ---- */

static uint64_t rx_post(struct guest *g, uint32_t len)
{
	uint64_t a = alloc_buf(g, len);
	struct buf b = { a, len, D_WRITE };

	memset(G(g, a), 0xee, len);
	add_chain(g, &b, 1);
	return a;
}

static void tap_inject(struct guest *g, size_t flen, uint8_t seed)
{
	uint8_t pkt[HDR + 8192];

	memset(pkt, 0, HDR);
	make_frame(pkt + HDR, flen, seed);
	CHECK_EQ(write(g->h.peer, pkt, HDR + flen), HDR + flen);
}

static void test_rx_mrg(void)
{
	struct guest *g = guest_new(8, 0);
	struct vn_rxcfg cfg = RX_MRG;
	uint8_t want[4096], got[4096];
	uint64_t a[4];
	uint16_t id;
	uint32_t len, at = 0;
	int i, round;

	cfg.max_pkt = 4000;
	for (round = 0; round < 5; round++) {   /* five passes over an 8-slot ring */
		g->data_next = DATA_START;
		for (i = 0; i < 4; i++)
			a[i] = rx_post(g, 1000);
		tap_inject(g, 2500 - HDR, (uint8_t)round);
		CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
		at = 0;
		for (i = 0; i < 3; i++) {
			CHECK(get_used(g, &id, &len));
			CHECK_EQ(len, i < 2 ? 1000 : 500);
			memcpy(got + at, G(g, a[i]), len);
			at += len;
		}
		CHECK(!get_used(g, &id, &len));
		CHECK_EQ(tl_get_le16(got + 10), 3);   /* num_buffers */
		make_frame(want, 2500 - HDR, (uint8_t)round);
		CHECK(memcmp(got + HDR, want, 2500 - HDR) == 0);
		/* The fourth buffer stays posted: a 64-byte frame lands in it. */
		tap_inject(g, 64, 7);
		CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
		CHECK(get_used(g, &id, &len));
		CHECK_EQ(len, HDR + 64);
	}
	CHECK_EQ(g->vq->broken, 0);
	guest_free(g);
}

static void test_rx_bad_buffers(void)
{
	struct guest *g = guest_new(16, 0);
	struct vn_rxcfg cfg = RX_MRG;
	struct buf b;
	uint16_t id;
	uint32_t len;

	b = (struct buf){ alloc_buf(g, 2000), 2000, 0 };          /* read-only for RX */
	add_chain(g, &b, 1);
	b = (struct buf){ 0x2000, 2000, D_WRITE };                 /* outside memory */
	add_chain(g, &b, 1);
	b = (struct buf){ alloc_buf(g, 4), 4, D_WRITE };           /* shorter than the header */
	add_chain(g, &b, 1);
	rx_post(g, 2048);
	tap_inject(g, 1514, 1);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	CHECK_EQ(g->st.drops[VN_DROP_DIRECTION], 1);
	CHECK_EQ(g->st.drops[VN_DROP_DESC_ADDR], 1);
	CHECK_EQ(g->st.drops[VN_DROP_RX_BUF_SHORT], 1);
	CHECK(get_used(g, &id, &len) && len == 0);
	CHECK(get_used(g, &id, &len) && len == 0);
	CHECK(get_used(g, &id, &len) && len == 0);
	CHECK(get_used(g, &id, &len) && len == HDR + 1514);
	CHECK_EQ(g->vq->broken, 0);
	guest_free(g);
}

/* ---- GET/SET_VRING_BASE ---- */

static void test_base(void)
{
	struct guest *g = guest_new(4, 0);
	struct vn_rxcfg cfg = RX_MRG;
	uint16_t id, base;
	uint32_t len;
	int i;

	/* Five single-descriptor chains through a 4-slot ring: slot 1, wrap 0. */
	for (i = 0; i < 5; i++) {
		tx_packet(g, 64, 1, 1);
		CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
		CHECK(get_used(g, &id, &len));
	}
	drain_peer(g);
	base = vn_vring_reset(g->vq);
	CHECK_EQ(base, 1);
	/* Resume there: the next chain is taken. */
	CHECK_EQ(setup(g, base, F_PACKED), 0);
	tx_packet(g, 64, 2, 1);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK(get_used(g, &id, &len));
	drain_peer(g);
	/* RX: two chains seen, one consumed: the base is the other one's slot. */
	CHECK_EQ(g->avail_slot, 2);
	rx_post(g, 2000);
	rx_post(g, 2000);                       /* slots 2, 3 (wrap 0) */
	cfg.max_pkt = 2000;
	tap_inject(g, 100, 1);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	CHECK(get_used(g, &id, &len));
	CHECK_EQ(vn_vring_avail_count(g->vq), 1);
	CHECK_EQ(vn_vring_reset(g->vq), 3);
	/* After a full pass the wrap bit is back. */
	CHECK_EQ(setup(g, 3, F_PACKED), 0);
	tap_inject(g, 100, 2);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	CHECK(get_used(g, &id, &len));
	CHECK_EQ(vn_vring_reset(g->vq), 1u << VN_VRING_PACKED_WRAP_BIT);
	/* A base slot outside the ring is refused. */
	CHECK_EQ(setup(g, 4, F_PACKED), -EINVAL);
	CHECK_EQ(setup(g, (uint16_t)(4 | (1u << VN_VRING_PACKED_WRAP_BIT)), F_PACKED), -EINVAL);
	CHECK_EQ(g->vq->ready, 0);
	guest_free(g);
}

static void test_setup_refusals(void)
{
	struct guest *g = guest_new(256, 0);
	uint64_t wrap = 1u << VN_VRING_PACKED_WRAP_BIT;

	vn_vring_reset(g->vq);
	/* Sizes: 1..32768, any (not only powers of two). */
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 0, uaddr_of(RING_DESC), uaddr_of(DRIVER_EV),
				uaddr_of(DEVICE_EV), (uint16_t)wrap, F_PACKED), -EINVAL);
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 32769, uaddr_of(RING_DESC), uaddr_of(DRIVER_EV),
				uaddr_of(DEVICE_EV), (uint16_t)wrap, F_PACKED), -EINVAL);
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 300, uaddr_of(RING_DESC), uaddr_of(DRIVER_EV),
				uaddr_of(DEVICE_EV), (uint16_t)wrap, F_PACKED), 0);
	vn_vring_reset(g->vq);
	/* Alignment: ring 16, event structures 4. */
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 256, uaddr_of(RING_DESC + 8), uaddr_of(DRIVER_EV),
				uaddr_of(DEVICE_EV), (uint16_t)wrap, F_PACKED), -EINVAL);
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 256, uaddr_of(RING_DESC), uaddr_of(DRIVER_EV + 2),
				uaddr_of(DEVICE_EV), (uint16_t)wrap, F_PACKED), -EINVAL);
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 256, uaddr_of(RING_DESC), uaddr_of(DRIVER_EV),
				uaddr_of(DEVICE_EV + 2), (uint16_t)wrap, F_PACKED), -EINVAL);
	/* Outside memory: the ring's end, an event structure. */
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 256, uaddr_of(GPA_A + SIZE_A - 16 * 255),
				uaddr_of(DRIVER_EV), uaddr_of(DEVICE_EV), (uint16_t)wrap, F_PACKED),
		 -EFAULT);
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 256, uaddr_of(RING_DESC), UADDR_A - 4,
				uaddr_of(DEVICE_EV), (uint16_t)wrap, F_PACKED), -EFAULT);
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 256, uaddr_of(RING_DESC), uaddr_of(DRIVER_EV),
				uaddr_of(GPA_A + SIZE_A - 2), (uint16_t)wrap, F_PACKED), -EFAULT);
	CHECK_EQ(g->vq->ready, 0);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), -EINVAL);
	/* A split ring is refused a size that is not a power of two, as before. */
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, 300, uaddr_of(RING_DESC), uaddr_of(DRIVER_EV),
				uaddr_of(DEVICE_EV), 0, 0), -EINVAL);
	/* Translation follows a memory table change. */
	CHECK_EQ(setup(g, (uint16_t)wrap, F_PACKED), 0);
	CHECK_EQ(vn_vring_translate(g->vq, g->h.mem), 0);
	CHECK_EQ(g->vq->ready, 1);
	guest_free(g);
}

/* ---- event suppression ---- */

static void test_notify(void)
{
	struct guest *g = guest_new(16, 0);
	uint16_t id;
	uint32_t len;

	/* Ours: kicks enabled after setup; DISABLE while polling. */
	CHECK_EQ(tl_get_le16(G(g, DEVICE_EV + 2)), VN_VRING_EVENT_F_ENABLE);
	vn_vring_notify_disable(g->vq);
	CHECK_EQ(tl_get_le16(G(g, DEVICE_EV + 2)), VN_VRING_EVENT_F_DISABLE);
	CHECK_EQ(vn_vring_notify_enable(g->vq), 0);
	CHECK_EQ(tl_get_le16(G(g, DEVICE_EV + 2)), VN_VRING_EVENT_F_ENABLE);
	tx_packet(g, 64, 1, 1);
	CHECK_EQ(vn_vring_notify_enable(g->vq), 1);     /* work arrived: do not sleep */
	/* The guest's: DISABLE suppresses, ENABLE notifies. */
	tl_put_le16(G(g, DRIVER_EV + 2), VN_VRING_EVENT_F_DISABLE);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 0);
	CHECK_EQ(g->st.notify_suppressed, 1);
	tl_put_le16(G(g, DRIVER_EV + 2), VN_VRING_EVENT_F_ENABLE);
	tx_packet(g, 64, 1, 1);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 1);
	/* DESC without EVENT_IDX negotiated is not honoured: notify. */
	tl_put_le16(G(g, DRIVER_EV + 2), VN_VRING_EVENT_F_DESC);
	tl_put_le16(G(g, DRIVER_EV), 15);
	tx_packet(g, 64, 1, 1);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 1);
	while (get_used(g, &id, &len))
		;
	drain_peer(g);
	guest_free(g);

	/* With EVENT_IDX. */
	g = guest_new(4, F_EVENT_IDX);
	/* Ours: DESC at the first slot not seen available (slot 0, wrap 1). */
	CHECK_EQ(tl_get_le16(G(g, DEVICE_EV + 2)), VN_VRING_EVENT_F_DESC);
	CHECK_EQ(tl_get_le16(G(g, DEVICE_EV)), 0x8000);
	/* The guest wants a notification once the used descriptor at slot 2
	 * (wrap 1) is written. */
	tl_put_le16(G(g, DRIVER_EV + 2), VN_VRING_EVENT_F_DESC);
	tl_put_le16(G(g, DRIVER_EV), 0x8000 | 2);
	tx_packet(g, 64, 1, 1);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 1);                  /* first ever: always */
	CHECK_EQ(tl_get_le16(G(g, DEVICE_EV)), 0x8000 | 1);  /* kick request follows */
	tx_packet(g, 64, 1, 1);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 0);                  /* wrote slot 1 only */
	tx_packet(g, 64, 1, 1);
	tx_packet(g, 64, 1, 1);                 /* slots 2, 3 */
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 2);
	CHECK_EQ(calls(g), 1);                  /* slot 2 written */
	CHECK_EQ(tl_get_le16(G(g, DEVICE_EV)), 0);    /* slot 0, wrap 0 */
	/* Same slot, other wrap counter: not yet. */
	tl_put_le16(G(g, DRIVER_EV), 0x8000 | 1);
	tx_packet(g, 64, 1, 1);                 /* slot 0, wrap 0 */
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 0);
	tl_put_le16(G(g, DRIVER_EV), 1);              /* slot 1, wrap 0 */
	tx_packet(g, 64, 1, 1);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 1);
	/* A hostile offset (beyond the ring) only decides notifications. */
	tl_put_le16(G(g, DRIVER_EV), 0x7fff);
	tx_packet(g, 64, 1, 1);
	CHECK(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64) == 1);
	while (get_used(g, &id, &len))
		;
	drain_peer(g);
	guest_free(g);
}

/* ---- fuzz: random bytes in the ring, random flags ---- */

static uint64_t rnd_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	return tl_xorshift64(&rnd_state);
}

#define FUZZ_NUM 16
#define FUZZ_ITERS 4000

/* Descriptors pointing at plausible and implausible places, random flags. */
static void fuzz_scramble(struct guest *g)
{
	int k, n = (int)(rnd() % 6);

	for (k = 0; k < n; k++) {
		uint32_t i = (uint32_t)(rnd() % FUZZ_NUM);
		uint64_t addr = rnd() % 4 ? DATA_START + rnd() % 0x10000 : rnd();
		uint32_t len = (uint32_t)(rnd() % 4 ? rnd() % 3000 : rnd());
		uint16_t fl = (uint16_t)rnd();

		if (rnd() % 2)  /* usually make it look available */
			fl = (uint16_t)((fl & ~(D_AVAIL | D_USED)) |
					avail_bits(g->vq->pk ? (uint32_t)(rnd() & 1) : 1));
		desc_put(g, RING_DESC, i, addr, len, (uint16_t)(rnd() % (FUZZ_NUM + 2)), fl);
	}
	if (rnd() % 4 == 0)
		tl_put_le16(G(g, DRIVER_EV + 2 * (rnd() & 1)), (uint16_t)rnd());
	if (rnd() % 4 == 0) {
		uint8_t pkt[HDR + 1600];

		memset(pkt, 0, sizeof(pkt));
		(void)!write(g->h.peer, pkt, HDR + rnd() % 1600);
	}
}

static void test_fuzz(void)
{
	struct vn_rxcfg rxc = RX_MRG;
	uint64_t feats = F_INDIRECT | F_EVENT_IDX;
	struct guest *g = guest_new(FUZZ_NUM, feats);
	int iter, broken = 0;

	for (iter = 0; iter < FUZZ_ITERS; iter++) {
		uint32_t budget = (uint32_t)(rnd() % 32);
		int rc;

		fuzz_scramble(g);
		rxc.mrg_rxbuf = (uint32_t)(rnd() & 1);
		if (rnd() & 1)
			rc = vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, budget);
		else
			rc = vn_rx_fill(g->vq, g->h.mem, g->h.tap, &rxc, &g->st, budget);
		CHECK(rc >= 0 || rc == -EIO || rc == -ENOBUFS);
		drain_peer(g);
		if (rnd() % 8 == 0)
			vn_rx_discard(g->vq, g->h.tap, &g->st, 64);
		if (g->vq->broken || rnd() % 64 == 0) {
			uint16_t base;

			broken += g->vq->broken != 0;
			base = vn_vring_reset(g->vq);
			CHECK((base & 0x7fff) < FUZZ_NUM);
			feats = rnd() & (F_INDIRECT | F_EVENT_IDX);
			CHECK_EQ(setup(g, base, feats | F_PACKED), 0);
		}
	}
	CHECK(broken > 0);
	CHECK(g->st.chains > 0);
	guest_free(g);
}

int main(void)
{
	test_tx_basic();
	test_tx_wrap(4);
	test_tx_wrap(5);
	test_tx_wrap(256);
	test_tx_indirect();
	test_tx_bad_buffers();
	test_wrap_misuse();
	test_broken_rings();
	test_in_flight_overflow();
	test_rx_mrg();
	test_rx_bad_buffers();
	test_base();
	test_setup_refusals();
	test_notify();
	test_fuzz();
	printf("test_packed: %lu checks, %lu failures\n", tl.checks, tl.fails);
	return tl.fails ? 1 : 0;
}
