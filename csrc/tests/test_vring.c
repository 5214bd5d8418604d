/*
 * test_vring.c - the guest memory table, split virtqueues, TX drain and RX fill,
 * driven by a fake guest, including hostile rings.
 *
 * Build (also under -fsanitize=address,undefined):
 *   cc -Icsrc -DVN_VERSION='"t"' csrc/tests/test_vring.c csrc/vn_*.c -o t && ./t
 *
 * The guest's RAM is a memfd mapped twice: once by vn_mem (as the device
 * process would) and once by this test (playing the guest driver).  Two
 * regions sit back to back in guest physical space (A then B) with unrelated
 * VMM addresses, so buffers that run from A into B and past B's end can be
 * tested.  A SOCK_SEQPACKET socketpair stands in for the tap: one writev is
 * one packet, one read returns one packet.  (A real tap is used by the
 * Python tests; the socketpair differs only in how it reports a packet
 * larger than the read buffer, which these tests avoid.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vn_mem.h"
#include "vn_netq.h"
#include "vn_offload.h"
#include "vn_vring.h"

#define TL_FAKE_GUEST
#include "testlib.h"

/* Guest RAM layout: region A then region B, contiguous in gpa and in the memfd. */
#define GPA_A 0x100000ULL
#define SIZE_A (4ULL << 20)
#define GPA_B (GPA_A + SIZE_A)
#define SIZE_B (2ULL << 20)
#define UADDR_A 0x7f0000000000ULL
#define UADDR_B 0x7f1000000000ULL
#define MEMFD_SIZE (SIZE_A + SIZE_B)

/* Ring areas in region A, buffers after them. */
#define RING_DESC (GPA_A + 0x0000)
#define RING_AVAIL (GPA_A + 0x10000)
#define RING_USED (GPA_A + 0x20000)
#define DATA_START (GPA_A + 0x40000)

#define HDR 12
#define F_EVENT_IDX (1ULL << VN_F_RING_EVENT_IDX)
#define F_INDIRECT (1ULL << VN_F_RING_INDIRECT_DESC)

struct guest {
	struct tl_fake_host h;  /* RAM from GPA_A, memory table, fake tap, call fd */
	struct vn_vring *vq;
	uint32_t num;
	uint16_t avail_idx;     /* the driver's next avail index */
	uint64_t data_next;     /* bump allocator for buffers */
	struct vn_stats st;
};

static uint8_t *G(struct guest *g, uint64_t gpa)
{
	return g->h.ram + (gpa - GPA_A);
}

static uint64_t uaddr_of(uint64_t gpa)
{
	return UADDR_A + (gpa - GPA_A);
}

static void set_desc_at(struct guest *g, uint64_t table, uint32_t i, uint64_t addr,
			uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *d = G(g, table + (uint64_t)i * 16);

	tl_put_le64(d, addr);
	tl_put_le32(d + 8, len);
	tl_put_le16(d + 12, flags);
	tl_put_le16(d + 14, next);
}

static void set_desc(struct guest *g, uint32_t i, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	set_desc_at(g, RING_DESC, i, addr, len, flags, next);
}

static void avail_push(struct guest *g, uint16_t head)
{
	tl_put_le16(G(g, RING_AVAIL + 4 + 2 * (g->avail_idx % g->num)), head);
	g->avail_idx++;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	tl_put_le16(G(g, RING_AVAIL + 2), g->avail_idx);
}

static uint16_t used_idx(struct guest *g)
{
	return tl_get_le16(G(g, RING_USED + 2));
}

static void used_elem(struct guest *g, uint16_t i, uint32_t *id, uint32_t *len)
{
	const uint8_t *e = G(g, RING_USED + 4 + 8 * (uint64_t)(i % g->num));

	*id = tl_get_le32(e);
	*len = tl_get_le32(e + 4);
}

static uint64_t alloc_buf(struct guest *g, uint64_t len)
{
	/* Unbounded: hostile cases point buffers past the end on purpose. */
	return tl_bump_alloc(&g->data_next, len, UINT64_MAX);
}

/* A buffer holding @data. */
static uint64_t buf_with(struct guest *g, const void *data, uint32_t len)
{
	uint64_t a = alloc_buf(g, len);

	memcpy(G(g, a), data, len);
	return a;
}

static struct guest *guest_new(uint32_t num, uint64_t features)
{
	struct guest *g = calloc(1, sizeof(*g));

	tl_fake_host_init(&g->h, "vn-test-guest", MEMFD_SIZE);
	CHECK_EQ(vn_mem_map_region(g->h.mem, g->h.memfd, GPA_A, SIZE_A, UADDR_A, 0), 0);
	CHECK_EQ(vn_mem_map_region(g->h.mem, g->h.memfd, GPA_B, SIZE_B, UADDR_B, SIZE_A), 0);
	g->vq = vn_vring_new();
	g->num = num;
	g->data_next = DATA_START;
	CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, num, uaddr_of(RING_DESC), uaddr_of(RING_AVAIL),
				uaddr_of(RING_USED), 0, features), 0);
	g->vq->call_fd = g->h.call;
	return g;
}

static void guest_free(struct guest *g)
{
	vn_vring_free(g->vq);
	tl_fake_host_free(&g->h);
	free(g);
}

/* Packets read from the peer end; -1 when none is waiting. */
static ssize_t peer_read(struct guest *g, uint8_t *buf, size_t cap)
{
	return read(g->h.peer, buf, cap);
}

static int calls(struct guest *g)
{
	return tl_fake_host_calls(&g->h);
}

static const struct vn_txcfg TX_VNET = { .hdr_sz = HDR, .tap_has_vnet_hdr = 1,
	.tap_offloads = VN_TUN_F_CSUM | VN_TUN_F_TSO4 | VN_TUN_F_TSO6 | VN_TUN_F_USO4 |
			VN_TUN_F_USO6 | VN_TUN_F_UFO | VN_TUN_F_TSO_ECN };
static const struct vn_txcfg TX_NOOFF = { .hdr_sz = HDR, .tap_has_vnet_hdr = 1 };
static const struct vn_txcfg TX_PLAIN = { .hdr_sz = HDR };

/* ---- packet builders (independent of the library's checksum code) ---- */

/*
 * Ethernet + IPv4 + TCP (proto 6) or UDP (17) with @pay payload bytes.
 * With @partial the L4 check field holds the pseudo-header sum (NEEDS_CSUM),
 * otherwise the full checksum.
 */
static size_t build_ipv4(uint8_t *f, uint8_t proto, size_t pay, int partial)
{
	size_t l4h = proto == 6 ? 20 : 8, l4len = l4h + pay, i;
	uint8_t *ip = f + 14, *l4 = ip + 20;
	uint32_t ps;

	memset(f, 0, 14 + 20 + l4len);
	memcpy(f, "\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01", 12);
	tl_put_be16(f + 12, 0x0800);
	ip[0] = 0x45;
	tl_put_be16(ip + 2, (uint16_t)(20 + l4len));
	tl_put_be16(ip + 4, 0x1234);
	tl_put_be16(ip + 6, 0x4000);
	ip[8] = 64;
	ip[9] = proto;
	memcpy(ip + 12, "\xc6\x12\x00\x01\xc6\x12\x00\x02", 8);    /* 198.18.0.1 -> .2 */
	tl_put_be16(ip + 10, (uint16_t)~tl_ref_sum(ip, 20, 0));
	tl_put_be16(l4, 40000);
	tl_put_be16(l4 + 2, 5201);
	if (proto == 6) {
		tl_put_be16(l4 + 4, 0);
		tl_put_be16(l4 + 6, 1000);
		l4[12] = 0x50;
		l4[13] = 0x18;
		tl_put_be16(l4 + 14, 65535);
	} else {
		tl_put_be16(l4 + 4, (uint16_t)l4len);
	}
	for (i = 0; i < pay; i++)
		l4[l4h + i] = (uint8_t)(i * 7 + 3);
	ps = tl_ref_sum(ip + 12, 8, 0) + proto + (uint32_t)l4len;
	while (ps >> 16)
		ps = (ps & 0xffff) + (ps >> 16);
	if (partial) {
		tl_put_be16(l4 + (proto == 6 ? 16 : 6), (uint16_t)ps);
	} else {
		uint16_t c = (uint16_t)~tl_ref_sum(l4, l4len, ps);

		tl_put_be16(l4 + (proto == 6 ? 16 : 6), c ? c : 0xffff);
	}
	return 14 + 20 + l4len;
}

static void build_hdr(uint8_t *h, uint8_t flags, uint8_t gso_type, uint16_t hdr_len,
		      uint16_t gso_size, uint16_t csum_start, uint16_t csum_offset)
{
	memset(h, 0, HDR);
	h[0] = flags;
	h[1] = gso_type;
	tl_put_le16(h + 2, hdr_len);
	tl_put_le16(h + 4, gso_size);
	tl_put_le16(h + 6, csum_start);
	tl_put_le16(h + 8, csum_offset);
}

/* Queue hdr+frame as one descriptor at index @i. */
static void tx_simple(struct guest *g, uint16_t i, const uint8_t *hdr, const uint8_t *frame,
		      size_t flen)
{
	uint8_t pkt[HDR + 2048];
	uint64_t a;

	memcpy(pkt, hdr, HDR);
	memcpy(pkt + HDR, frame, flen);
	a = buf_with(g, pkt, (uint32_t)(HDR + flen));
	set_desc(g, i, a, (uint32_t)(HDR + flen), 0, 0);
	avail_push(g, i);
}

/* ---- memory table ---- */

static void test_mem_refusals(void)
{
	struct vn_mem *mem = malloc(sizeof(*mem));
	int fd = memfd_create("vn-test-mem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	int pfd[2];

	if (fd < 0 || ftruncate(fd, 1 << 20) < 0 || pipe(pfd) < 0)
		abort();
	vn_mem_init(mem);
	CHECK_EQ(vn_mem_map_region(mem, fd, 0, 0, 0, 0), -EINVAL);
	CHECK_EQ(vn_mem_map_region(mem, fd, UINT64_MAX - 0xfff, 0x2000, 0, 0), -EOVERFLOW);
	CHECK_EQ(vn_mem_map_region(mem, fd, 0, 0x2000, UINT64_MAX - 0xfff, 0), -EOVERFLOW);
	CHECK_EQ(vn_mem_map_region(mem, fd, 0, 0x2000, 0, UINT64_MAX - 0xfff), -EOVERFLOW);
	/* Past the end of the file: mapping it would SIGBUS on touch. */
	CHECK_EQ(vn_mem_map_region(mem, fd, 0, 1 << 20, 0, 0x1000), -ENXIO);
	CHECK_EQ(vn_mem_map_region(mem, fd, 0, (1 << 20) + 1, 0, 0), -ENXIO);
	CHECK_EQ(vn_mem_map_region(mem, pfd[0], 0, 0x1000, 0, 0), -ENODEV);
	CHECK_EQ(vn_mem_map_region(mem, -1, 0, 0x1000, 0, 0), -EBADF);
	CHECK_EQ(mem->nregions, 0);

	/* A region at a non-page-aligned offset maps the right bytes. */
	{
		uint8_t b = 0xab;

		CHECK_EQ(pwrite(fd, &b, 1, 0x1234 + 5), 1);
		CHECK_EQ(vn_mem_map_region(mem, fd, 0x10000, 0x1000, 0x500000, 0x1234), 0);
		CHECK(vn_gpa_to_host(mem, 0x10005, 1) != NULL);
		CHECK_EQ(*(uint8_t *)vn_gpa_to_host(mem, 0x10005, 1), 0xab);
		CHECK_EQ(*(uint8_t *)vn_uaddr_to_host(mem, 0x500005, 1), 0xab);
		CHECK_EQ(mem->regions[0].sealed, 0);
	}
	/* Overlaps, in gpa and in uaddr. */
	CHECK_EQ(vn_mem_map_region(mem, fd, 0x10fff, 0x1000, 0x900000, 0), -EEXIST);
	CHECK_EQ(vn_mem_map_region(mem, fd, 0xf001, 0x1000, 0x900000, 0), -EEXIST);
	CHECK_EQ(vn_mem_map_region(mem, fd, 0x20000, 0x1000, 0x500fff, 0), -EEXIST);
	/* Adjacent is fine; sealing is reported. */
	CHECK_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	CHECK_EQ(vn_mem_map_region(mem, fd, 0x11000, 0x1000, 0x501000, 0x2000), 0);
	CHECK_EQ(mem->nregions, 2);
	CHECK_EQ(mem->regions[1].sealed, 1);
	CHECK_EQ(vn_mem_unmap_region(mem, 0x11000, 0x2000), -ENOENT);
	CHECK_EQ(vn_mem_unmap_region(mem, 0x11000, 0x1000), 0);
	CHECK_EQ(mem->nregions, 1);
	vn_mem_unmap_all(mem);
	CHECK_EQ(mem->nregions, 0);
	CHECK(vn_gpa_to_host(mem, 0x10005, 1) == NULL);
	close(fd);
	close(pfd[0]);
	close(pfd[1]);
	free(mem);
}

static void test_mem_table_full(void)
{
	struct vn_mem *mem = malloc(sizeof(*mem));
	int fd = memfd_create("vn-test-full", MFD_CLOEXEC);
	uint64_t i;

	if (fd < 0 || ftruncate(fd, 0x1000) < 0)
		abort();
	vn_mem_init(mem);
	/* Inserted in descending gpa order: the table must stay sorted. */
	for (i = 0; i < VN_MEM_MAX_REGIONS; i++) {
		uint64_t gpa = (VN_MEM_MAX_REGIONS - i) * 0x10000;

		CHECK_EQ(vn_mem_map_region(mem, fd, gpa, 0x1000, gpa, 0), 0);
	}
	CHECK_EQ(vn_mem_map_region(mem, fd, 0, 0x1000, 0, 0), -ENOSPC);
	for (i = 1; i < mem->nregions; i++)
		CHECK(mem->regions[i - 1].gpa < mem->regions[i].gpa);
	CHECK(vn_gpa_to_host(mem, 0x10000 * 300 + 0xfff, 1) != NULL);
	CHECK(vn_gpa_to_host(mem, 0x10000 * 300 + 0x1000, 1) == NULL);
	CHECK(vn_gpa_to_host(mem, 0x10000 * 300 + 0xfff, 2) == NULL);
	vn_mem_unmap_all(mem);
	close(fd);
	free(mem);
}

static void test_translate(void)
{
	struct guest *g = guest_new(256, 0);
	struct iovec iov[4];

	CHECK(vn_gpa_to_host(g->h.mem, GPA_A, SIZE_A) != NULL);
	CHECK(vn_gpa_to_host(g->h.mem, GPA_A, SIZE_A + 1) == NULL);      /* runs into B */
	CHECK(vn_gpa_to_host(g->h.mem, GPA_A - 1, 1) == NULL);
	CHECK(vn_gpa_to_host(g->h.mem, GPA_B + SIZE_B, 0) == NULL);
	CHECK(vn_gpa_to_host(g->h.mem, GPA_B + SIZE_B - 1, 1) != NULL);
	CHECK(vn_gpa_to_host(g->h.mem, GPA_A + 16, UINT64_MAX) == NULL);
	CHECK(vn_gpa_to_host(g->h.mem, UINT64_MAX, 2) == NULL);
	CHECK(vn_uaddr_to_host(g->h.mem, UADDR_B, SIZE_B) == g->h.mem->regions[1].host);
	CHECK(vn_uaddr_to_host(g->h.mem, UADDR_A + SIZE_A - 8, 16) == NULL);
	/* A buffer from A into B is two pieces; past B's end it is a fault. */
	CHECK_EQ(vn_gpa_to_iov(g->h.mem, GPA_B - 100, 300, iov, 4), 2);
	CHECK(iov[0].iov_base == g->h.mem->regions[0].host + SIZE_A - 100 && iov[0].iov_len == 100);
	CHECK(iov[1].iov_base == g->h.mem->regions[1].host && iov[1].iov_len == 200);
	CHECK_EQ(vn_gpa_to_iov(g->h.mem, GPA_B - 100, 300, iov, 1), VN_IOV_FULL);
	CHECK_EQ(vn_gpa_to_iov(g->h.mem, GPA_B + SIZE_B - 10, 11, iov, 4), VN_IOV_FAULT);
	CHECK_EQ(vn_gpa_to_iov(g->h.mem, UINT64_MAX - 4, 10, iov, 4), VN_IOV_FAULT);
	CHECK_EQ(vn_gpa_to_iov(g->h.mem, 0, 0, iov, 0), 0);
	guest_free(g);
}

/* ---- ring setup ---- */

static void test_setup_refusals(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_vring *vq = vn_vring_new();
	uint64_t d = uaddr_of(RING_DESC), a = uaddr_of(RING_AVAIL), u = uaddr_of(RING_USED);
	static const uint32_t bad_num[] = { 0, 3, 100, 65536, 32769, UINT32_MAX };
	size_t i;

	for (i = 0; i < sizeof(bad_num) / sizeof(bad_num[0]); i++)
		CHECK_EQ(vn_vring_setup(vq, g->h.mem, bad_num[i], d, a, u, 0, 0), -EINVAL);
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 256, 0x1000, a, u, 0, 0), -EFAULT);
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 256, d, UADDR_A + SIZE_A - 4, u, 0, 0), -EFAULT);
	/* The used ring ends with avail_event: 2 bytes short of fitting, then fitting. */
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 256, d, a, UADDR_A + SIZE_A - (4 + 8 * 256), 0, 0),
		 -EFAULT);
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 256, d, a, UADDR_A + SIZE_A - (8 + 8 * 256), 0, 0),
		 0);
	/* The descriptor table of a large ring runs past the region. */
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 32768, UADDR_B + SIZE_B - 16 * 32768 + 16, a, u,
				0, 0), -EFAULT);
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 256, d + 8, a, u, 0, 0), -EINVAL);
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 256, d, a + 1, u, 0, 0), -EINVAL);
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 256, d, a, u + 2, 0, 0), -EINVAL);
	CHECK_EQ(vq->ready, 0);
	/* Not set up: the data path refuses. */
	CHECK_EQ(vn_tx_drain(vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 8), -EINVAL);
	CHECK_EQ(vn_vring_setup(vq, g->h.mem, 32768, d, a, u, 7, F_EVENT_IDX), 0);
	CHECK_EQ(vq->last_avail_idx, 7);
	CHECK_EQ(vn_vring_reset(vq), 7);
	CHECK_EQ(vq->ready, 0);
	vn_vring_free(vq);
	guest_free(g);
}

/* ---- TX ---- */

static void test_tx_plain(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[2048], hdr[HDR], out[4096];
	size_t flen = build_ipv4(frame, 17, 100, 0);
	uint32_t id, len;

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	tx_simple(g, 5, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK(memcmp(out, hdr, HDR) == 0 && memcmp(out + HDR, frame, flen) == 0);
	CHECK_EQ(used_idx(g), 1);
	used_elem(g, 0, &id, &len);
	CHECK_EQ(id, 5);
	CHECK_EQ(len, 0);
	CHECK_EQ(g->st.packets, 1);
	CHECK_EQ(g->st.bytes, flen);
	CHECK_EQ(g->st.notifications, 1);
	CHECK_EQ(calls(g), 1);
	/* Nothing more: a no-op. */
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 0);
	CHECK_EQ(calls(g), 0);

	/* Without a vnet header on the tap, only the frame goes out. */
	tx_simple(g, 6, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_PLAIN, &g->st, 64), 1);
	CHECK_EQ(peer_read(g, out, sizeof(out)), flen);
	CHECK(memcmp(out, frame, flen) == 0);
	guest_free(g);
}

/* Header split 5 + 7 over two descriptors, a zero-length one, frame in two. */
static void test_tx_scattered(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[2048], hdr[HDR], out[4096];
	size_t flen = build_ipv4(frame, 6, 500, 0);

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	set_desc(g, 10, buf_with(g, hdr, 5), 5, VN_VRING_DESC_F_NEXT, 11);
	set_desc(g, 11, buf_with(g, hdr + 5, 7), 7, VN_VRING_DESC_F_NEXT, 12);
	set_desc(g, 12, 0xdead0000, 0, VN_VRING_DESC_F_NEXT, 13);     /* zero length */
	set_desc(g, 13, buf_with(g, frame, 20), 20, VN_VRING_DESC_F_NEXT, 14);
	set_desc(g, 14, buf_with(g, frame + 20, (uint32_t)flen - 20), (uint32_t)flen - 20, 0, 0);
	avail_push(g, 10);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK(memcmp(out, hdr, HDR) == 0 && memcmp(out + HDR, frame, flen) == 0);
	CHECK_EQ(g->st.packets, 1);
	guest_free(g);
}

/* A buffer running from region A into region B is accepted (two iovecs). */
static void test_tx_cross_region(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[2048], hdr[HDR], pkt[4096], out[4096];
	size_t flen = build_ipv4(frame, 17, 300, 0);
	uint64_t a = GPA_B - 50;

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	memcpy(pkt, hdr, HDR);
	memcpy(pkt + HDR, frame, flen);
	memcpy(G(g, a), pkt, HDR + flen);
	set_desc(g, 0, a, (uint32_t)(HDR + flen), 0, 0);
	avail_push(g, 0);
	/* Runs past region B's end into nothing: dropped, not broken. */
	set_desc(g, 1, GPA_B + SIZE_B - 20, (uint32_t)(HDR + flen), 0, 0);
	avail_push(g, 1);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 2);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK(memcmp(out, pkt, HDR + flen) == 0);
	CHECK_EQ(g->st.drops[VN_DROP_DESC_ADDR], 1);
	CHECK_EQ(g->vq->broken, 0);
	CHECK_EQ(used_idx(g), 2);
	guest_free(g);
}

/* Packet-level problems: each chain returned with len 0, counted, queue fine. */
static void test_tx_bad_packets(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[2048], hdr[HDR], out[4096];
	size_t flen = build_ipv4(frame, 6, 100, 0);
	uint16_t i = 0;

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	/* 1: outside guest memory */
	set_desc(g, i, 0x10, 100, 0, 0);
	avail_push(g, i++);
	/* 2: huge length */
	set_desc(g, i, GPA_A, 0xffffffff, 0, 0);
	avail_push(g, i++);
	/* 3: device-writable descriptor in TX */
	set_desc(g, i, buf_with(g, hdr, HDR), HDR, VN_VRING_DESC_F_WRITE, 0);
	avail_push(g, i++);
	/* 4: shorter than the header */
	set_desc(g, i, buf_with(g, hdr, 8), 8, 0, 0);
	avail_push(g, i++);
	/* 5: GSO without NEEDS_CSUM (the offload engine refuses) */
	{
		uint8_t bad[HDR];

		build_hdr(bad, 0, VN_GSO_TCPV4, 54, 1000, 0, 0);
		tx_simple(g, i++, bad, frame, flen);
	}
	/* 6: frame shorter than an Ethernet header */
	tx_simple(g, i++, hdr, frame, 10);
	/* 7: header only, then a good packet */
	tx_simple(g, i++, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 7);
	CHECK_EQ(g->st.drops[VN_DROP_DESC_ADDR], 1);
	CHECK_EQ(g->st.drops[VN_DROP_TOO_LONG], 1);
	CHECK_EQ(g->st.drops[VN_DROP_DIRECTION], 1);
	CHECK_EQ(g->st.drops[VN_DROP_HDR_SHORT], 1);
	CHECK_EQ(g->st.drops[VN_BAD_GSO_NO_CSUM], 1);
	CHECK_EQ(g->st.drops[VN_BAD_FRAME_SHORT], 1);
	CHECK_EQ(g->st.packets, 1);
	CHECK_EQ(g->st.chains, 7);
	CHECK_EQ(used_idx(g), 7);
	CHECK_EQ(g->vq->broken, 0);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK_EQ(peer_read(g, out, sizeof(out)), -1);
	guest_free(g);
}

/* Chains with more pieces than writev() takes are dropped. */
static void test_tx_too_many_iov(void)
{
	struct guest *g = guest_new(256, F_INDIRECT);
	uint64_t table = alloc_buf(g, 16 * VN_MAX_INDIRECT);
	uint64_t data = alloc_buf(g, 2 * VN_MAX_INDIRECT);
	uint32_t i;

	for (i = 0; i < VN_MAX_INDIRECT; i++)
		set_desc_at(g, table, i, data + 2 * i, 1,
			    i + 1 < VN_MAX_INDIRECT ? VN_VRING_DESC_F_NEXT : 0, (uint16_t)(i + 1));
	set_desc(g, 0, table, 16 * VN_MAX_INDIRECT, VN_VRING_DESC_F_INDIRECT, 0);
	avail_push(g, 0);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(g->st.drops[VN_DROP_TOO_MANY_IOV], 1);
	CHECK_EQ(g->vq->broken, 0);
	guest_free(g);
}

/* Indirect table: direct header descriptor, then the frame in an indirect table. */
static void test_tx_indirect_ok(void)
{
	struct guest *g = guest_new(256, F_INDIRECT);
	uint8_t frame[2048], hdr[HDR], out[4096];
	size_t flen = build_ipv4(frame, 17, 200, 0);
	uint64_t table = alloc_buf(g, 48);

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	/* The table's order is not its index order: 0 -> 2 -> 1. */
	set_desc_at(g, table, 0, buf_with(g, frame, 30), 30, VN_VRING_DESC_F_NEXT, 2);
	set_desc_at(g, table, 2, buf_with(g, frame + 30, 40), 40, VN_VRING_DESC_F_NEXT, 1);
	set_desc_at(g, table, 1, buf_with(g, frame + 70, (uint32_t)flen - 70),
		    (uint32_t)flen - 70, 0, 0);
	set_desc(g, 3, buf_with(g, hdr, HDR), HDR, VN_VRING_DESC_F_NEXT, 4);
	/* WRITE on the indirect descriptor itself is ignored (2.7.5.3.2). */
	set_desc(g, 4, table, 48, VN_VRING_DESC_F_INDIRECT | VN_VRING_DESC_F_WRITE, 0);
	avail_push(g, 3);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK(memcmp(out + HDR, frame, flen) == 0);
	guest_free(g);
}

/*
 * Rings that are themselves inconsistent break the queue.  Most are one descriptor at slot 0 made available: @d says
 * which (when @build is NULL); the others are built by @build.
 */
struct broken_case {
	const char *name;
	uint64_t features;
	int reason;
	void (*build)(struct guest *g);
	struct { uint64_t addr; uint32_t len; uint16_t flags, next; } d;
};

static void bc_head(struct guest *g)
{
	avail_push(g, 256);
}

static void bc_loop(struct guest *g)
{
	set_desc(g, 0, DATA_START, 100, VN_VRING_DESC_F_NEXT, 1);
	set_desc(g, 1, DATA_START, 100, VN_VRING_DESC_F_NEXT, 0);
	avail_push(g, 0);
}

static void bc_self_loop(struct guest *g)
{
	set_desc(g, 7, DATA_START, 0, VN_VRING_DESC_F_NEXT, 7);
	avail_push(g, 7);
}

/* All descriptors but the good packet's (200) in one ring-sized cycle. */
static void bc_longer_than_ring(struct guest *g)
{
	uint32_t i;

	for (i = 0; i < 256; i++) {
		uint32_t next = (i + 1) % 256 == 200 ? 201 : (i + 1) % 256;

		if (i != 200)
			set_desc(g, i, DATA_START, 1, VN_VRING_DESC_F_NEXT, (uint16_t)next);
	}
	avail_push(g, 0);
}

static void bc_indirect_next(struct guest *g)
{
	set_desc(g, 0, DATA_START, 32, VN_VRING_DESC_F_INDIRECT | VN_VRING_DESC_F_NEXT, 1);
	set_desc(g, 1, DATA_START, 32, 0, 0);
	avail_push(g, 0);
}

static void bc_indirect_nested(struct guest *g)
{
	uint64_t t = alloc_buf(g, 32);

	set_desc_at(g, t, 0, DATA_START, 10, VN_VRING_DESC_F_NEXT, 1);
	set_desc_at(g, t, 1, t, 32, VN_VRING_DESC_F_INDIRECT, 0);
	set_desc(g, 0, t, 32, VN_VRING_DESC_F_INDIRECT, 0);
	avail_push(g, 0);
}

static void bc_indirect_loop(struct guest *g)
{
	uint64_t t = alloc_buf(g, 48);

	set_desc_at(g, t, 0, DATA_START, 10, VN_VRING_DESC_F_NEXT, 1);
	set_desc_at(g, t, 1, DATA_START, 10, VN_VRING_DESC_F_NEXT, 2);
	set_desc_at(g, t, 2, DATA_START, 10, VN_VRING_DESC_F_NEXT, 0);
	set_desc(g, 0, t, 48, VN_VRING_DESC_F_INDIRECT, 0);
	avail_push(g, 0);
}

static void bc_indirect_next_oob(struct guest *g)
{
	uint64_t t = alloc_buf(g, 32);

	set_desc_at(g, t, 0, DATA_START, 10, VN_VRING_DESC_F_NEXT, 2);    /* table has 2 */
	set_desc_at(g, t, 1, DATA_START, 10, 0, 0);
	set_desc(g, 0, t, 32, VN_VRING_DESC_F_INDIRECT, 0);
	avail_push(g, 0);
}

static void bc_avail_idx(struct guest *g)
{
	tl_put_le16(G(g, RING_AVAIL + 2), 257);
}

static const struct broken_case broken_cases[] = {
	{ "head >= num", 0, VN_RING_HEAD, .build = bc_head },
	{ "two-descriptor loop", 0, VN_RING_LOOP, .build = bc_loop },
	{ "self loop of zero-length", 0, VN_RING_LOOP, .build = bc_self_loop },
	{ "chain longer than ring", 0, VN_RING_LOOP, .build = bc_longer_than_ring },
	{ "next >= num", 0, VN_RING_NEXT, .d = { DATA_START, 100, VN_VRING_DESC_F_NEXT, 300 } },
	{ "indirect not negotiated", 0, VN_RING_INDIRECT_FEATURE,
	  .d = { DATA_START, 32, VN_VRING_DESC_F_INDIRECT, 0 } },
	{ "indirect with next", F_INDIRECT, VN_RING_INDIRECT_NEXT, .build = bc_indirect_next },
	{ "indirect len 0", F_INDIRECT, VN_RING_INDIRECT_LEN,
	  .d = { DATA_START, 0, VN_VRING_DESC_F_INDIRECT, 0 } },
	{ "indirect len 17", F_INDIRECT, VN_RING_INDIRECT_LEN,
	  .d = { DATA_START, 17, VN_VRING_DESC_F_INDIRECT, 0 } },
	{ "indirect too long", F_INDIRECT, VN_RING_INDIRECT_LEN,
	  .d = { DATA_START, 16 * (VN_MAX_INDIRECT + 1), VN_VRING_DESC_F_INDIRECT, 0 } },
	{ "indirect nested", F_INDIRECT, VN_RING_INDIRECT_NESTED, .build = bc_indirect_nested },
	{ "indirect outside memory", F_INDIRECT, VN_RING_INDIRECT_ADDR,
	  .d = { 0x1000, 32, VN_VRING_DESC_F_INDIRECT, 0 } },
	{ "indirect across regions", F_INDIRECT, VN_RING_INDIRECT_ADDR,
	  /* a table straddling A and B: rings and tables must be contiguous */
	  .d = { GPA_B - 16, 32, VN_VRING_DESC_F_INDIRECT, 0 } },
	{ "indirect loop", F_INDIRECT, VN_RING_LOOP, .build = bc_indirect_loop },
	{ "indirect next out of table", F_INDIRECT, VN_RING_NEXT, .build = bc_indirect_next_oob },
	{ "avail idx > num ahead", 0, VN_RING_AVAIL_IDX, .build = bc_avail_idx },
};

/* Each case after one good packet: the good one is completed, then the queue stops. */
static void test_broken_rings(void)
{
	size_t i;

	for (i = 0; i < sizeof(broken_cases) / sizeof(broken_cases[0]); i++) {
		const struct broken_case *bc = &broken_cases[i];
		struct guest *g = guest_new(256, bc->features);
		uint8_t frame[256], hdr[HDR], out[512];
		size_t flen = build_ipv4(frame, 17, 20, 0);
		unsigned long before = tl.fails;

		build_hdr(hdr, 0, 0, 0, 0, 0, 0);
		tx_simple(g, 200, hdr, frame, flen);
		if (bc->build) {
			bc->build(g);
		} else {
			set_desc(g, 0, bc->d.addr, bc->d.len, bc->d.flags, bc->d.next);
			avail_push(g, 0);
		}
		CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), -EIO);
		CHECK_EQ(g->vq->broken, bc->reason);
		CHECK_EQ(g->st.ring_errors[bc->reason], 1);
		if (bc->reason != VN_RING_AVAIL_IDX) {
			CHECK_EQ(used_idx(g), 1);       /* the good packet was completed */
			CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
		}
		/* Stays broken; RX on the same ring refuses too. */
		CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), -EIO);
		CHECK_EQ(g->st.ring_errors[bc->reason], 1);
		CHECK_EQ(vn_vring_notify_enable(g->vq), -1);
		if (tl.fails != before)
			fprintf(stderr, "  in broken ring case: %s\n", bc->name);
		/* A reset and a fresh setup make it usable again. */
		vn_vring_reset(g->vq);
		CHECK_EQ(g->vq->broken, 0);
		guest_free(g);
	}
}

/* NEEDS_CSUM and TSO the tap may not take: completed / segmented here. */
static void test_tx_software(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[4096], hdr[HDR], out[4096];
	size_t flen = build_ipv4(frame, 6, 3000, 1), n;
	int segs = 0;
	ssize_t r;

	/* TSO, MSS 1000: three segments, each with correct checksums. */
	build_hdr(hdr, VN_HDR_F_NEEDS_CSUM, VN_GSO_TCPV4, 54, 1000, 34, 16);
	{
		uint8_t pkt[HDR + 4096];
		uint64_t a;

		memcpy(pkt, hdr, HDR);
		memcpy(pkt + HDR, frame, flen);
		a = buf_with(g, pkt, (uint32_t)(HDR + flen));
		set_desc(g, 0, a, (uint32_t)(HDR + flen), 0, 0);
		avail_push(g, 0);
	}
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_NOOFF, &g->st, 64), 1);
	while ((r = peer_read(g, out, sizeof(out))) > 0) {
		static const uint8_t zero[HDR];

		CHECK(memcmp(out, zero, HDR) == 0);
		CHECK_EQ(vn_verify(out + HDR, (size_t)r - HDR), 1);
		CHECK_EQ((size_t)r - HDR, 54 + 1000);
		segs++;
	}
	CHECK_EQ(segs, 3);
	CHECK_EQ(g->st.sw_segmented, 1);
	CHECK_EQ(g->st.sw_segments, 3);
	CHECK_EQ(g->st.csum_completed, 1);
	CHECK_EQ(g->st.tso_passthrough, 0);

	/* Plain NEEDS_CSUM to a tap without vnet header. */
	n = build_ipv4(frame, 17, 333, 1);
	build_hdr(hdr, VN_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6);
	tx_simple(g, 1, hdr, frame, n);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_PLAIN, &g->st, 64), 1);
	r = peer_read(g, out, sizeof(out));
	CHECK_EQ(r, n);
	CHECK_EQ(vn_verify(out, (size_t)r), 1);
	CHECK_EQ(g->st.csum_completed, 2);

	/* The same to a tap that takes it: passed through untouched. */
	tx_simple(g, 2, hdr, frame, n);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	r = peer_read(g, out, sizeof(out));
	CHECK_EQ(r, HDR + n);
	CHECK(memcmp(out, hdr, HDR) == 0 && memcmp(out + HDR, frame, n) == 0);
	CHECK_EQ(g->st.csum_passthrough, 1);
	CHECK_EQ(g->st.csum_completed, 2);
	guest_free(g);
}

/* A driver must not set DATA_VALID on TX: cleared before the tap sees it. */
static void test_tx_flags_cleared(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[2048], hdr[HDR], out[4096];
	size_t flen = build_ipv4(frame, 17, 64, 0);

	build_hdr(hdr, VN_HDR_F_DATA_VALID, 0, 0, 0, 0, 0);
	tx_simple(g, 0, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK_EQ(out[0], 0);
	CHECK_EQ(g->st.hdr_flags_cleared, 1);
	guest_free(g);
}

static void test_tx_budget_discard(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_txcfg cfg = TX_VNET;
	uint8_t frame[2048], hdr[HDR], out[4096];
	size_t flen = build_ipv4(frame, 17, 64, 0);
	uint16_t i;

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	for (i = 0; i < 3; i++)
		tx_simple(g, i, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 2), 2);
	CHECK_EQ(g->vq->last_avail_idx, 2);
	cfg.discard = 1;
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 2), 1);
	CHECK_EQ(g->st.discarded, 1);
	CHECK_EQ(g->st.packets, 3);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK_EQ(peer_read(g, out, sizeof(out)), -1);
	cfg.hdr_sz = 11;
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 2), -EINVAL);
	guest_free(g);
}

/* EAGAIN from the tap: the batch ends and the chain is kept, not lost. */
static void test_tx_eagain(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[2048], hdr[HDR], out[4096], fill[1500];
	size_t flen = build_ipv4(frame, 17, 64, 0);
	int sent = 0, got = 0;
	int small = 4096;

	setsockopt(g->h.tap, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	memset(fill, 0, sizeof(fill));
	while (write(g->h.tap, fill, sizeof(fill)) > 0)
		sent++;
	CHECK(sent > 0);
	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	tx_simple(g, 0, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 0);
	CHECK_EQ(g->st.tap_eagain, 1);
	CHECK_EQ(g->vq->last_avail_idx, 0);
	CHECK_EQ(used_idx(g), 0);
	while (peer_read(g, out, sizeof(out)) > 0)
		got++;
	CHECK_EQ(got, sent);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(peer_read(g, out, sizeof(out)), HDR + flen);
	CHECK_EQ(used_idx(g), 1);
	guest_free(g);
}

/* Interrupt and kick suppression. */
static void test_notify(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[2048], hdr[HDR], out[4096];
	size_t flen = build_ipv4(frame, 17, 64, 0);

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	/* Without EVENT_IDX: NO_INTERRUPT is honoured; NO_NOTIFY follows enable/disable. */
	tl_put_le16(G(g, RING_AVAIL), VN_VRING_AVAIL_F_NO_INTERRUPT);
	tx_simple(g, 0, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 0);
	CHECK_EQ(g->st.notify_suppressed, 1);
	vn_vring_notify_disable(g->vq);
	CHECK_EQ(tl_get_le16(G(g, RING_USED)), VN_VRING_USED_F_NO_NOTIFY);
	CHECK_EQ(vn_vring_notify_enable(g->vq), 0);
	CHECK_EQ(tl_get_le16(G(g, RING_USED)), 0);
	tx_simple(g, 1, hdr, frame, flen);
	CHECK_EQ(vn_vring_notify_enable(g->vq), 1);     /* work arrived: do not sleep */
	CHECK_EQ(vn_vring_avail_count(g->vq), 1);
	guest_free(g);

	/* With EVENT_IDX. */
	g = guest_new(256, F_EVENT_IDX);
	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	CHECK_EQ(tl_get_le16(G(g, RING_USED + 4 + 8 * 256)), 0);      /* avail_event = base */
	/* The guest wants an interrupt only once used idx passes 2. */
	tl_put_le16(G(g, RING_AVAIL + 4 + 2 * 256), 2);
	tx_simple(g, 0, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 1);                  /* first ever: always */
	CHECK_EQ(tl_get_le16(G(g, RING_USED + 4 + 8 * 256)), 1);      /* avail_event follows */
	tx_simple(g, 1, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 0);                  /* used 1 -> 2: event 2 not crossed */
	tx_simple(g, 2, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(calls(g), 1);                  /* used 2 -> 3 crosses event 2 */
	/* Kicks disabled: avail_event is left behind. */
	vn_vring_notify_disable(g->vq);
	tx_simple(g, 3, hdr, frame, flen);
	CHECK_EQ(vn_tx_drain(g->vq, g->h.mem, g->h.tap, &TX_VNET, &g->st, 64), 1);
	CHECK_EQ(tl_get_le16(G(g, RING_USED + 4 + 8 * 256)), 3);
	CHECK_EQ(vn_vring_notify_enable(g->vq), 0);
	CHECK_EQ(tl_get_le16(G(g, RING_USED + 4 + 8 * 256)), 4);
	while (peer_read(g, out, sizeof(out)) > 0)
		;
	guest_free(g);
}

/* ---- RX ---- */

static const struct vn_rxcfg RX_MRG = { .hdr_sz = HDR, .tap_has_vnet_hdr = 1, .mrg_rxbuf = 1 };

/* Post one writable buffer of @len bytes as its own chain at index @i. */
static uint64_t rx_post(struct guest *g, uint16_t i, uint32_t len)
{
	uint64_t a = alloc_buf(g, len);

	memset(G(g, a), 0xee, len);
	set_desc(g, i, a, len, VN_VRING_DESC_F_WRITE, 0);
	avail_push(g, i);
	return a;
}

/* Queue hdr + frame on the fake tap, as a tap with a vnet header would. */
static void tap_inject(struct guest *g, const uint8_t *hdr, const uint8_t *frame, size_t flen)
{
	uint8_t pkt[HDR + 8192];

	memcpy(pkt, hdr, HDR);
	memcpy(pkt + HDR, frame, flen);
	CHECK_EQ(write(g->h.peer, pkt, HDR + flen), HDR + flen);
}

/* Gather the bytes of used buffers from @addrs with @lens. */
static void gather(struct guest *g, const uint64_t *addrs, const uint32_t *lens, int n,
		   uint8_t *out)
{
	int i;

	for (i = 0; i < n; i++) {
		memcpy(out, G(g, addrs[i]), lens[i]);
		out += lens[i];
	}
}

/* MRG_RXBUF, window big enough for max_pkt: the tap reads into guest memory. */
static void test_rx_mrg_direct(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_rxcfg cfg = RX_MRG;
	uint8_t frame[4096], hdr[HDR], got[8192];
	size_t flen = build_ipv4(frame, 17, 2500 - 42 - HDR, 0);
	uint64_t addrs[4];
	uint32_t id, len, lens[3];
	uint16_t i;

	cfg.max_pkt = 4000;
	for (i = 0; i < 4; i++)
		addrs[i] = rx_post(g, i, 1000);
	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	tap_inject(g, hdr, frame, flen);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	CHECK_EQ(used_idx(g), 3);
	for (i = 0; i < 3; i++) {
		used_elem(g, i, &id, &len);
		CHECK_EQ(id, i);
		lens[i] = len;
	}
	CHECK_EQ(lens[0], 1000);
	CHECK_EQ(lens[1], 1000);
	CHECK_EQ(lens[2], HDR + flen - 2000);
	gather(g, addrs, lens, 3, got);
	CHECK_EQ(tl_get_le16(got + 10), 3);           /* num_buffers */
	CHECK(memcmp(got + HDR, frame, flen) == 0);
	CHECK_EQ(g->vq->last_avail_idx, 3);     /* the 4th buffer stays available */
	CHECK_EQ(vn_vring_avail_count(g->vq), 1);
	CHECK_EQ(g->st.rx_buffers, 3);
	CHECK_EQ(g->st.packets, 1);
	CHECK_EQ(g->st.bytes, flen);
	CHECK_EQ(calls(g), 1);
	/* Nothing on the tap: nothing delivered, buffers untouched. */
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 0);
	CHECK_EQ(g->vq->last_avail_idx, 3);
	guest_free(g);
}

/* The header itself split over two descriptors of the first chain. */
static void test_rx_hdr_straddles(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_rxcfg cfg = RX_MRG;
	uint8_t frame[4096], hdr[HDR], got[4096];
	size_t flen = build_ipv4(frame, 6, 300, 0);
	uint64_t a = alloc_buf(g, 11), b = alloc_buf(g, 2000);
	uint32_t id, len;

	cfg.max_pkt = 2000;
	set_desc(g, 0, a, 11, VN_VRING_DESC_F_WRITE | VN_VRING_DESC_F_NEXT, 1);
	set_desc(g, 1, b, 2000, VN_VRING_DESC_F_WRITE, 0);
	avail_push(g, 0);
	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	tl_put_le16(hdr + 10, 0x5555);                /* the tap leaves num_buffers alone */
	tap_inject(g, hdr, frame, flen);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	used_elem(g, 0, &id, &len);
	CHECK_EQ(id, 0);
	CHECK_EQ(len, HDR + flen);
	memcpy(got, G(g, a), 11);
	memcpy(got + 11, G(g, b), HDR + flen - 11);
	CHECK_EQ(tl_get_le16(got + 10), 1);
	CHECK(memcmp(got + HDR, frame, flen) == 0);
	guest_free(g);
}

/* Fewer buffers than max_pkt: bounce buffer; too few for the packet: parked. */
static void test_rx_mrg_bounce_and_park(void)
{
	struct guest *g = guest_new(256, 0);
	uint8_t frame[4096], hdr[HDR], got[8192];
	size_t flen = build_ipv4(frame, 17, 2500 - 42 - HDR, 0);
	uint64_t addrs[3];
	uint32_t id, lens[3];
	uint16_t i;

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	addrs[0] = rx_post(g, 0, 1000);
	addrs[1] = rx_post(g, 1, 1000);
	tap_inject(g, hdr, frame, flen);
	tap_inject(g, hdr, frame, 60);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &RX_MRG, &g->st, 64), -ENOBUFS);
	CHECK_EQ(g->st.rx_parked, 1);
	CHECK_EQ(vn_rx_parked_len(g->vq), HDR + flen);
	CHECK_EQ(used_idx(g), 0);
	CHECK_EQ(g->vq->last_avail_idx, 0);
	/* Still not enough. */
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &RX_MRG, &g->st, 64), -ENOBUFS);
	CHECK_EQ(g->st.rx_parked, 1);
	/* One more buffer: the parked packet goes, then the small one waits. */
	addrs[2] = rx_post(g, 2, 1000);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &RX_MRG, &g->st, 64), 1);
	CHECK_EQ(used_idx(g), 3);
	for (i = 0; i < 3; i++)
		used_elem(g, i, &id, &lens[i]);
	gather(g, addrs, lens, 3, got);
	CHECK_EQ(tl_get_le16(got + 10), 3);
	CHECK(memcmp(got + HDR, frame, flen) == 0);
	CHECK_EQ(vn_rx_parked_len(g->vq), 0);
	/* The small packet is still on the tap: no buffers means no read. */
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &RX_MRG, &g->st, 64), -ENOBUFS);
	CHECK_EQ(vn_rx_discard(g->vq, g->h.tap, &g->st, 64), 1);
	CHECK_EQ(g->st.drops[VN_DROP_RX_NO_BUFFERS], 1);
	CHECK_EQ(read(g->h.peer, got, sizeof(got)), -1);
	guest_free(g);
}

/* Without MRG_RXBUF: one chain per packet, and it must hold all of it. */
static void test_rx_no_mrg(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_rxcfg cfg = { .hdr_sz = HDR, .tap_has_vnet_hdr = 1, .max_pkt = HDR + 1514 };
	uint8_t frame[4096], hdr[HDR], got[4096];
	size_t flen = build_ipv4(frame, 17, 1000, 0);
	uint64_t h = alloc_buf(g, HDR), d = alloc_buf(g, 1514);
	uint32_t id, len;

	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	/* Chain 0: header buffer + data buffer (the "big packets" layout). */
	set_desc(g, 0, h, HDR, VN_VRING_DESC_F_WRITE | VN_VRING_DESC_F_NEXT, 1);
	set_desc(g, 1, d, 1514, VN_VRING_DESC_F_WRITE, 0);
	avail_push(g, 0);
	/* Chain 2: too small for the next packet. */
	set_desc(g, 2, alloc_buf(g, 100), 100, VN_VRING_DESC_F_WRITE, 0);
	avail_push(g, 2);
	tap_inject(g, hdr, frame, flen);
	tap_inject(g, hdr, frame, flen);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	used_elem(g, 0, &id, &len);
	CHECK_EQ(id, 0);
	CHECK_EQ(len, HDR + flen);
	memcpy(got, G(g, h), HDR);
	memcpy(got + HDR, G(g, d), flen);
	CHECK_EQ(tl_get_le16(got + 10), 1);
	CHECK(memcmp(got + HDR, frame, flen) == 0);
	/* The second packet did not fit chain 2: dropped, chain kept. */
	CHECK_EQ(g->st.drops[VN_DROP_RX_TRUNCATED], 1);
	CHECK_EQ(used_idx(g), 1);
	CHECK_EQ(g->vq->last_avail_idx, 1);

	/* Read straight into chain 2 (max_pkt below its size): a packet larger
	 * than it is seen by the byte that lands past it, and dropped. */
	cfg.max_pkt = 90;
	tap_inject(g, hdr, frame, flen);
	tap_inject(g, hdr, frame, 60);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	CHECK_EQ(g->st.drops[VN_DROP_RX_TRUNCATED], 2);
	used_elem(g, 1, &id, &len);
	CHECK_EQ(id, 2);
	CHECK_EQ(len, HDR + 60);
	guest_free(g);
}

/* Bad RX buffers: returned with length 0 and counted; good ones then used. */
static void test_rx_bad_buffers(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_rxcfg cfg = RX_MRG;
	uint8_t frame[4096], hdr[HDR];
	size_t flen = build_ipv4(frame, 17, 100, 0);
	uint32_t id, len;

	cfg.max_pkt = 1000;
	set_desc(g, 0, alloc_buf(g, 1000), 1000, 0, 0);                 /* read-only */
	avail_push(g, 0);
	set_desc(g, 1, alloc_buf(g, 8), 8, VN_VRING_DESC_F_WRITE, 0);   /* < header */
	avail_push(g, 1);
	set_desc(g, 2, 0x20, 1000, VN_VRING_DESC_F_WRITE, 0);           /* outside memory */
	avail_push(g, 2);
	rx_post(g, 3, 1000);
	build_hdr(hdr, 0, 0, 0, 0, 0, 0);
	tap_inject(g, hdr, frame, flen);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	CHECK_EQ(g->st.drops[VN_DROP_DIRECTION], 1);
	CHECK_EQ(g->st.drops[VN_DROP_RX_BUF_SHORT], 1);
	CHECK_EQ(g->st.drops[VN_DROP_DESC_ADDR], 1);
	CHECK_EQ(used_idx(g), 4);
	used_elem(g, 0, &id, &len);
	CHECK(id == 0 && len == 0);
	used_elem(g, 3, &id, &len);
	CHECK(id == 3 && len == HDR + flen);
	CHECK_EQ(g->vq->broken, 0);
	/* A broken ring stops RX too. */
	avail_push(g, 999);
	tap_inject(g, hdr, frame, flen);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), -EIO);
	CHECK_EQ(g->vq->broken, VN_RING_HEAD);
	guest_free(g);
}

/* A tap without a vnet header: the header is made here, DATA_VALID when right. */
static void test_rx_no_vnet_hdr(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_rxcfg cfg = { .hdr_sz = HDR, .mrg_rxbuf = 1, .guest_csum = 1 };
	uint8_t frame[4096], got[4096];
	size_t flen = build_ipv4(frame, 17, 200, 0);
	uint64_t a0 = rx_post(g, 0, 2048), a1 = rx_post(g, 1, 2048);
	uint32_t id, len;

	CHECK_EQ(write(g->h.peer, frame, flen), flen);
	frame[flen - 1] ^= 0xff;                /* a bad checksum */
	CHECK_EQ(write(g->h.peer, frame, flen), flen);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 2);
	used_elem(g, 0, &id, &len);
	CHECK_EQ(len, HDR + flen);
	memcpy(got, G(g, a0), HDR + flen);
	CHECK_EQ(got[0], VN_HDR_F_DATA_VALID);
	CHECK_EQ(tl_get_le16(got + 10), 1);
	frame[flen - 1] ^= 0xff;
	CHECK(memcmp(got + HDR, frame, flen) == 0);
	memcpy(got, G(g, a1), HDR);
	CHECK_EQ(got[0], 0);
	CHECK_EQ(g->st.rx_data_valid, 1);
	guest_free(g);
}

/* 20-byte header (hash report): num_buffers set, hash fields zeroed. */
static void test_rx_hdr20(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_rxcfg cfg = { .hdr_sz = 20, .tap_has_vnet_hdr = 1, .mrg_rxbuf = 1,
				.max_pkt = 1000 };
	uint8_t frame[2048], pkt[2048];
	size_t flen = build_ipv4(frame, 17, 100, 0);
	uint64_t a = rx_post(g, 0, 2048);
	static const uint8_t zero[8];

	memset(pkt, 0xaa, 20);
	pkt[0] = pkt[1] = 0;
	memcpy(pkt + 20, frame, flen);
	CHECK_EQ(write(g->h.peer, pkt, 20 + flen), 20 + flen);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), 1);
	CHECK_EQ(tl_get_le16(G(g, a + 10)), 1);
	CHECK(memcmp(G(g, a + 12), zero, 8) == 0);
	CHECK(memcmp(G(g, a + 20), frame, flen) == 0);
	guest_free(g);
}

static void test_rx_args(void)
{
	struct guest *g = guest_new(256, 0);
	struct vn_rxcfg cfg = RX_MRG;

	cfg.hdr_sz = 10;                        /* MRG_RXBUF needs num_buffers */
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), -EINVAL);
	cfg = RX_MRG;
	cfg.max_pkt = 20;
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), -EINVAL);
	cfg.max_pkt = HDR + VN_MAX_FRAME + 1;
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), -EINVAL);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, NULL, &g->st, 64), -EINVAL);
	/* No buffers at all: -ENOBUFS and nothing read. */
	cfg = RX_MRG;
	CHECK_EQ(write(g->h.peer, "x", 1), 1);
	CHECK_EQ(vn_rx_fill(g->vq, g->h.mem, g->h.tap, &cfg, &g->st, 64), -ENOBUFS);
	CHECK_EQ(vn_rx_discard(g->vq, g->h.tap, &g->st, 64), 1);
	guest_free(g);
}

/* ---- random rings: whatever the guest writes, no crash, no overrun ---- */

/* Iterations of the random-ring test; each is one batch on a scrambled ring. */
#define FUZZ_ITERS 3000
#define FUZZ_NUM 64
#define FUZZ_DATA 0x10000       /* bytes of buffer space the descriptors aim at */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	return tl_xorshift64(&rng);
}

/* An address: mostly in the buffer area, sometimes at region edges or anywhere. */
static uint64_t fuzz_addr(void)
{
	switch (rnd() % 10) {
	case 0:
		return rnd();
	case 1:
		return GPA_B - (rnd() % 64);
	case 2:
		return GPA_B + SIZE_B - (rnd() % 64);
	case 3:
		return GPA_A - (rnd() % 64);
	default:
		return DATA_START + rnd() % FUZZ_DATA;
	}
}

static uint32_t fuzz_len(void)
{
	switch (rnd() % 8) {
	case 0:
		return (uint32_t)rnd();
	case 1:
		return 16 * (uint32_t)(rnd() % 8);      /* indirect-table sized */
	case 2:
		return 0;
	default:
		return (uint32_t)(rnd() % 2048);
	}
}

static void fuzz_scramble(struct guest *g)
{
	uint32_t i, n = (uint32_t)(rnd() % 8);
	uint8_t frame[256], hdr[HDR];
	size_t flen = build_ipv4(frame, rnd() & 1 ? 6 : 17, rnd() % 100, (int)(rnd() & 1));

	for (i = 0; i < FUZZ_NUM; i++)
		set_desc(g, i, fuzz_addr(), fuzz_len(), (uint16_t)(rnd() % 8),
			 (uint16_t)(rnd() % 16 ? rnd() % FUZZ_NUM : rnd()));
	/* Random bytes in the buffer area, with a plausible packet somewhere. */
	for (i = 0; i < 64; i++) {
		uint64_t v = rnd();

		memcpy(G(g, DATA_START + rnd() % (FUZZ_DATA - 8)), &v, 8);
	}
	build_hdr(hdr, (uint8_t)(rnd() % 4), (uint8_t)(rnd() % 6 == 0 ? VN_GSO_TCPV4 : 0),
		  (uint16_t)(rnd() % 80), (uint16_t)(rnd() % 1500), 34, (uint16_t)(rnd() & 1 ? 16 : 6));
	memcpy(G(g, DATA_START), hdr, HDR);
	memcpy(G(g, DATA_START + HDR), frame, flen);
	for (i = 0; i < n; i++)
		avail_push(g, (uint16_t)(rnd() % 16 ? rnd() % FUZZ_NUM : rnd()));
	if (rnd() % 20 == 0)
		tl_put_le16(G(g, RING_AVAIL + 2), (uint16_t)rnd());
	/* Packets for RX; the socket may be full when RX has not run for a while. */
	if (rnd() % 4 == 0 && write(g->h.peer, frame, flen) < 0)
		CHECK_EQ(errno, EAGAIN);
}

static void test_fuzz_rings(void)
{
	static const struct vn_txcfg *txc[] = { &TX_VNET, &TX_NOOFF, &TX_PLAIN };
	struct vn_rxcfg rxc = RX_MRG;
	uint64_t feats = F_INDIRECT | F_EVENT_IDX;
	struct guest *g = guest_new(FUZZ_NUM, feats);
	uint8_t sink[70000];
	int iter, broken = 0;

	for (iter = 0; iter < FUZZ_ITERS; iter++) {
		uint16_t used_before = g->vq->last_used_idx;
		uint32_t budget = (uint32_t)(rnd() % 32);
		int rc;

		fuzz_scramble(g);
		rxc.mrg_rxbuf = (uint32_t)(rnd() & 1);
		rxc.tap_has_vnet_hdr = (uint32_t)(rnd() & 1);
		if (rnd() & 1)
			rc = vn_tx_drain(g->vq, g->h.mem, g->h.tap, txc[rnd() % 3], &g->st, budget);
		else
			rc = vn_rx_fill(g->vq, g->h.mem, g->h.tap, &rxc, &g->st, budget);
		CHECK(rc >= 0 || rc == -EIO || rc == -ENOBUFS);
		/* Never more used elements than the budget allows (RX: a packet may
		 * take several buffers, bad ones are returned too: bounded by num). */
		CHECK((uint16_t)(g->vq->last_used_idx - used_before) <= FUZZ_NUM);
		while (read(g->h.peer, sink, sizeof(sink)) > 0)
			;
		if (rnd() % 8 == 0)
			vn_rx_discard(g->vq, g->h.tap, &g->st, 64);
		if (g->vq->broken) {
			broken++;
			vn_vring_reset(g->vq);
			feats = rnd() & (F_INDIRECT | F_EVENT_IDX);
			CHECK_EQ(vn_vring_setup(g->vq, g->h.mem, FUZZ_NUM, uaddr_of(RING_DESC),
						uaddr_of(RING_AVAIL), uaddr_of(RING_USED),
						g->avail_idx, feats), 0);
		}
	}
	/* Both kinds of outcome happened: the test exercised something. */
	CHECK(broken > 0);
	CHECK(g->st.chains > 0);
	guest_free(g);
}

int main(void)
{
	test_mem_refusals();
	test_mem_table_full();
	test_translate();
	test_setup_refusals();
	test_tx_plain();
	test_tx_scattered();
	test_tx_cross_region();
	test_tx_bad_packets();
	test_tx_too_many_iov();
	test_tx_indirect_ok();
	test_broken_rings();
	test_tx_software();
	test_tx_flags_cleared();
	test_tx_budget_discard();
	test_tx_eagain();
	test_notify();
	test_rx_mrg_direct();
	test_rx_hdr_straddles();
	test_rx_mrg_bounce_and_park();
	test_rx_no_mrg();
	test_rx_bad_buffers();
	test_rx_no_vnet_hdr();
	test_rx_hdr20();
	test_rx_args();
	test_fuzz_rings();
	printf("test_vring: %lu checks, %lu failures\n", tl.checks, tl.fails);
	return tl.fails ? 1 : 0;
}
