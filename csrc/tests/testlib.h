/*
 * testlib.h - what the standalone C test programs (csrc/tests/test_*.c) share.
 *
 * Theory of operation
 *
 * Each csrc/tests/test_*.c is its own program (the Makefile links every one
 * with every C file of csrc/), and each includes this header once.
 * Everything here is static or static inline, so every program gets its own
 * copy: the one piece of state, `tl` (check counts, fuzz position, RNG
 * state), belongs to the program that includes it and nobody else.
 *
 *   - CHECK(cond) and CHECK_EQ(a, b) count every check and every failure and
 *     print a failure with file, line and what failed (inside a fuzz loop,
 *     with the iteration).  A program may define, before including:
 *       TL_MAX_REPORTED  failures printed before going quiet (the count is
 *                        still kept; default: all);
 *       TL_FUZZ_WHAT     what one fuzz step is called in reports (default
 *                        "fuzz iteration").
 *   - A xorshift64* generator (tl.rng; the seed is the program's) and a
 *     xorshift64 one (tl_xorshift64(), state the caller's), so fixed seeds
 *     give the same cases as before the programs shared them.
 *   - Big-endian (network) and little-endian (virtio) byte accessors, and a
 *     byte-at-a-time RFC 1071 reference sum independent of csrc/vn_csum.c.
 *   - With TL_FAKE_GUEST defined (which needs _GNU_SOURCE): the pieces of a
 *     fake guest for the virtqueue tests: guest RAM as a memfd mapped by the
 *     test, a SOCK_SEQPACKET socketpair standing in for the tap, an eventfd
 *     for the device's calls.
 */
#ifndef VN_TESTLIB_H
#define VN_TESTLIB_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TL_MAX_REPORTED
#define TL_MAX_REPORTED ULONG_MAX
#endif
#ifndef TL_FUZZ_WHAT
#define TL_FUZZ_WHAT "fuzz iteration"
#endif

/* The including program's own counters and RNG state (one program, one copy). */
struct tl_state {
	unsigned long checks;           /* checks made */
	unsigned long fails;            /* checks failed */
	unsigned long fuzz_iter;        /* current fuzz step, for reports */
	int in_fuzz;                    /* reports name the fuzz step */
	uint64_t rng;                   /* xorshift64* state, seeded by the program */
};

static struct tl_state tl;

/**
 * tl_check_() - count one check and report it when it failed
 * @ok: nonzero when the check held
 * @what: the condition's text
 * @file: source file of the check
 * @line: its line
 *
 * Return: @ok as 0 or 1, so a caller may branch on a check.
 */
static inline int tl_check_(int ok, const char *what, const char *file, int line)
{
	tl.checks++;
	if (ok)
		return 1;
	if (++tl.fails <= TL_MAX_REPORTED) {
		if (tl.in_fuzz)
			fprintf(stderr, "%s:%d: FAIL (%s %lu): %s\n", file, line, TL_FUZZ_WHAT,
				tl.fuzz_iter, what);
		else
			fprintf(stderr, "%s:%d: FAIL: %s\n", file, line, what);
	}
	return 0;
}

/**
 * tl_check_eq_() - count one equality check, reporting both sides when unequal
 * @a: the value found
 * @b: the value expected
 * @sa: @a's text
 * @sb: @b's text
 * @file: source file of the check
 * @line: its line
 *
 * Return: 1 when equal, else 0.
 */
static inline int tl_check_eq_(long long a, long long b, const char *sa, const char *sb,
			       const char *file, int line)
{
	tl.checks++;
	if (a == b)
		return 1;
	if (++tl.fails <= TL_MAX_REPORTED)
		fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", file, line, sa, a,
			sb, b);
	return 0;
}

#define CHECK(cond) tl_check_((cond) != 0, #cond, __FILE__, __LINE__)
#define CHECK_EQ(a, b) tl_check_eq_((long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)

/* ---- random numbers ------------------------------------------------------- */

/**
 * tl_rnd() - next value of the program's xorshift64* generator (state tl.rng)
 *
 * Return: 64 random bits.
 */
static inline uint64_t tl_rnd(void)
{
	tl.rng ^= tl.rng >> 12;
	tl.rng ^= tl.rng << 25;
	tl.rng ^= tl.rng >> 27;
	return tl.rng * 0x2545f4914f6cdd1dull;
}

/**
 * tl_rnd_below() - a random number below @n from tl_rnd()
 * @n: the bound (0 gives 0)
 *
 * Return: a value in [0, @n).
 */
static inline uint32_t tl_rnd_below(uint32_t n)
{
	return n ? (uint32_t)(tl_rnd() % n) : 0;
}

/**
 * tl_rnd_fill() - fill @n bytes at @p from tl_rnd(), one call a byte
 * @p: where
 * @n: how many
 */
static inline void tl_rnd_fill(uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)tl_rnd();
}

/**
 * tl_xorshift64() - next value of a plain xorshift64 generator
 * @s: its state (nonzero), advanced
 *
 * Return: the new state, which is the value.
 */
static inline uint64_t tl_xorshift64(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/**
 * tl_xmalloc() - malloc() that exits the program (status 2) when out of memory
 * @n: bytes (0 allocates 1, so the result is always a distinct heap block)
 *
 * Return: the block.
 */
static inline void *tl_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		fprintf(stderr, "out of memory (%zu bytes)\n", n);
		exit(2);
	}
	return p;
}

/* ---- byte order and the reference checksum --------------------------------- */

/**
 * tl_get_be16() - read a big-endian 16-bit value
 * @p: its first byte
 *
 * Return: the value.
 */
static inline uint16_t tl_get_be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

/**
 * tl_get_be32() - read a big-endian 32-bit value
 * @p: its first byte
 *
 * Return: the value.
 */
static inline uint32_t tl_get_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/**
 * tl_put_be16() - write the low 16 bits of @v big-endian
 * @p: where
 * @v: the value
 */
static inline void tl_put_be16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/**
 * tl_put_be32() - write @v big-endian
 * @p: where
 * @v: the value
 */
static inline void tl_put_be32(uint8_t *p, uint32_t v)
{
	tl_put_be16(p, v >> 16);
	tl_put_be16(p + 2, v);
}

/**
 * tl_get_le16() - read a little-endian 16-bit value (virtio ring fields)
 * @p: its first byte
 *
 * Return: the value.
 */
static inline uint16_t tl_get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

/**
 * tl_get_le32() - read a little-endian 32-bit value
 * @p: its first byte
 *
 * Return: the value.
 */
static inline uint32_t tl_get_le32(const uint8_t *p)
{
	return (uint32_t)tl_get_le16(p) | (uint32_t)tl_get_le16(p + 2) << 16;
}

/**
 * tl_put_le16() - write @v little-endian
 * @p: where
 * @v: the value
 */
static inline void tl_put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/**
 * tl_put_le32() - write @v little-endian
 * @p: where
 * @v: the value
 */
static inline void tl_put_le32(uint8_t *p, uint32_t v)
{
	tl_put_le16(p, (uint16_t)v);
	tl_put_le16(p + 2, (uint16_t)(v >> 16));
}

/**
 * tl_put_le64() - write @v little-endian
 * @p: where
 * @v: the value
 */
static inline void tl_put_le64(uint8_t *p, uint64_t v)
{
	tl_put_le32(p, (uint32_t)v);
	tl_put_le32(p + 4, (uint32_t)(v >> 32));
}

/**
 * tl_ref_sum() - RFC 1071 sum, one big-endian word (one byte pair) at a time
 * @p: the bytes
 * @n: how many (an odd last byte is padded with zero)
 * @init: a folded or unfolded sum to continue
 *
 * Deliberately naive: the reference the engine's checksum code is checked
 * against, sharing nothing with it.
 *
 * Return: the sum folded to 16 bits, not inverted.
 */
static inline uint16_t tl_ref_sum(const uint8_t *p, size_t n, uint32_t init)
{
	uint64_t s = init;
	size_t i;

	for (i = 0; i + 1 < n; i += 2)
		s += (uint32_t)((p[i] << 8) | p[i + 1]);
	if (n & 1)
		s += (uint32_t)p[n - 1] << 8;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)s;
}

/* ---- a fake guest for the virtqueue tests ---------------------------------- */

#ifdef TL_FAKE_GUEST
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vn_mem.h"

/*
 * The host side of a fake guest: its RAM (a memfd the test maps as the guest
 * driver and vn_mem maps as the device would), the tap stand-in and the call
 * eventfd.  A test's struct guest embeds one as `h`.
 */
struct tl_fake_host {
	int memfd;
	uint8_t *ram;           /* the test's view of guest RAM, from its lowest gpa */
	size_t ram_size;
	struct vn_mem *mem;     /* the device's memory table over the same memfd */
	int tap;                /* the device's end of the fake tap */
	int peer;               /* the test's end */
	int call;               /* eventfd the device signals */
};

/**
 * tl_fake_host_init() - create guest RAM, an empty memory table, the fake tap
 * @h: filled in
 * @name: the memfd's name (shows in /proc/<pid>/fd)
 * @size: bytes of guest RAM
 *
 * The tap stand-in is a nonblocking SOCK_SEQPACKET socketpair: one writev is
 * one packet, one read returns one packet.  Aborts when a resource cannot be
 * had (nothing can be tested then).  The caller maps regions into h->mem.
 */
static inline void tl_fake_host_init(struct tl_fake_host *h, const char *name, size_t size)
{
	int sv[2];

	h->memfd = memfd_create(name, MFD_CLOEXEC);
	if (h->memfd < 0 || ftruncate(h->memfd, (off_t)size) < 0)
		abort();
	h->ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, h->memfd, 0);
	if (h->ram == MAP_FAILED)
		abort();
	h->ram_size = size;
	h->mem = tl_xmalloc(sizeof(*h->mem));
	vn_mem_init(h->mem);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	h->tap = sv[0];
	h->peer = sv[1];
	h->call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (h->call < 0)
		abort();
}

/**
 * tl_fake_host_free() - undo tl_fake_host_init() (and the regions mapped since)
 * @h: the fake host
 */
static inline void tl_fake_host_free(struct tl_fake_host *h)
{
	vn_mem_unmap_all(h->mem);
	free(h->mem);
	munmap(h->ram, h->ram_size);
	close(h->memfd);
	close(h->tap);
	close(h->peer);
	close(h->call);
}

/**
 * tl_fake_host_calls() - how often the device signalled since the last look
 * @h: the fake host
 *
 * Return: the eventfd's count (reset to 0 by the read), 0 when none.
 */
static inline int tl_fake_host_calls(struct tl_fake_host *h)
{
	uint64_t v = 0;

	if (read(h->call, &v, sizeof(v)) != sizeof(v))
		return 0;
	return (int)v;
}

/**
 * tl_bump_alloc() - take @len bytes of guest buffer space, 64-byte aligned
 * @next: the next free gpa, advanced
 * @len: bytes wanted
 * @end: the gpa the space must not pass (aborts: the test is wrong), or
 *       UINT64_MAX when hostile tests may deliberately run off the end
 *
 * Return: the buffer's gpa.
 */
static inline uint64_t tl_bump_alloc(uint64_t *next, uint64_t len, uint64_t end)
{
	uint64_t a = *next;

	*next += (len + 63) & ~63ULL;
	if (*next > end)
		abort();
	return a;
}
#endif /* TL_FAKE_GUEST */

#endif /* VN_TESTLIB_H */
