/*
 * vn_csum.c - RFC 1071 Internet checksum, plain and fused with a copy.
 *
 * Theory of operation: the one's complement sum is independent of byte order
 * when both the data and the result stay in memory order (RFC 1071 2(B)), and
 * 2^16 == 1 modulo 0xffff, so wider words may be summed and folded at the end.
 * On x86-64 CPUs with AVX2 (checked once, at the first call) the bulk is
 * summed as 32-bit words into 64-bit lanes of four independent accumulators,
 * so that the adds do not wait on each other; a lane takes 2^24 words per
 * VN_CSUM_AVX2_CHUNK and cannot overflow before it is emptied.  Otherwise the
 * SSE2 loop widens 16-bit words to 32-bit lanes (no carries to track) and
 * empties the lanes into a 64-bit accumulator before they can overflow; the
 * tail and non-SSE2 builds sum 32-bit words into 64 bits.  Callers that sum a
 * packet in pieces must start each piece at an even offset from the checksum's
 * start (every caller in vmdnet does: headers are even-sized).
 */
#include <string.h>

#include "vn_csum.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VN_CSUM_HAVE_AVX2 1
/* Bytes the AVX2 loop sums between emptying its lanes: a 64-bit lane takes
 * two 32-bit words per 128 bytes, so after 1 GiB it is below 2^56 and the
 * 16 lanes together below 2^60. */
#define VN_CSUM_AVX2_CHUNK ((size_t)1 << 30)
/* Shorter buffers (packet headers) skip the AVX2 set-up. */
#define VN_CSUM_AVX2_MIN 32
#endif

#if defined(__SSE2__)
#include <emmintrin.h>

/* Blocks of 64 bytes between lane drains: each block adds at most 8 * 0xffff to
 * a 32-bit lane, so 4096 blocks (256 KiB) stay below 2^32. */
#define VN_CSUM_DRAIN_BLOCKS 4096u
#endif

static inline uint64_t fold64_to32(uint64_t acc)
{
	acc = (acc & 0xffffffffu) + (acc >> 32);
	acc = (acc & 0xffffffffu) + (acc >> 32);
	return acc;
}

/* Sum (and, when @copy, copy to @d) the bytes left after the vector loops in
 * 32-bit words.  Inlined into the two wrappers below so that neither tests
 * @copy; the copying one spares short tails a call to memcpy(). */
static inline __attribute__((always_inline))
uint64_t tail_words(uint8_t *d, const uint8_t *s, size_t len, uint64_t acc, const int copy)
{
	uint32_t w32;
	uint16_t w16;

	while (len >= 4) {
		memcpy(&w32, s, 4);
		if (copy) {
			memcpy(d, &w32, 4);
			d += 4;
		}
		acc += w32;
		s += 4;
		len -= 4;
	}
	if (len >= 2) {
		memcpy(&w16, s, 2);
		if (copy) {
			memcpy(d, &w16, 2);
			d += 2;
		}
		acc += w16;
		s += 2;
		len -= 2;
	}
	if (len) {
		/* The odd byte is the first byte of a zero-padded word. */
		uint8_t pad[2] = { s[0], 0 };

		if (copy)
			d[0] = s[0];
		memcpy(&w16, pad, 2);
		acc += w16;
	}
	return acc;
}

static uint64_t sum_tail(const uint8_t *p, size_t len, uint64_t acc)
{
	return tail_words(NULL, p, len, acc, 0);
}

static uint64_t copy_sum_tail(uint8_t *d, const uint8_t *s, size_t len, uint64_t acc)
{
	return tail_words(d, s, len, acc, 1);
}

#if defined(VN_CSUM_HAVE_AVX2)
/* 0: not checked yet, 1: use AVX2, -1: do not.  Racing first calls all store
 * the same answer. */
static int avx2_state;

static int have_avx2(void)
{
	if (!avx2_state) {
		__builtin_cpu_init();
		avx2_state = __builtin_cpu_supports("avx2") ? 1 : -1;
	}
	return avx2_state > 0;
}

__attribute__((target("avx2")))
static inline uint64_t avx2_hsum(__m256i a, __m256i b, __m256i c, __m256i d)
{
	uint64_t v[4];

	a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
	_mm256_storeu_si256((__m256i *)v, a);
	return v[0] + v[1] + v[2] + v[3];
}

/* Add the 32-bit words of @x to the 64-bit lanes of @lo (even words) and @hi. */
#define AVX2_ADD(lo, hi, x) do { \
		(lo) = _mm256_add_epi64((lo), _mm256_and_si256((x), mask32)); \
		(hi) = _mm256_add_epi64((hi), _mm256_srli_epi64((x), 32)); \
	} while (0)

/* Sum the whole 32-byte blocks at *@pp and, when @copy, store them at *@dp;
 * advance both and leave fewer than 32 bytes in *@lenp.  Inlined into the two
 * wrappers below so that neither tests @copy in its loop. */
__attribute__((target("avx2"), always_inline))
static inline uint64_t avx2_blocks(const uint8_t **pp, uint8_t **dp, size_t *lenp,
				   uint64_t acc, const int copy)
{
	const __m256i mask32 = _mm256_set1_epi64x(0xffffffff);
	__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
	const uint8_t *p = *pp;
	uint8_t *d = *dp;
	size_t len = *lenp;

	while (len >= 128) {
		size_t blocks = (len < VN_CSUM_AVX2_CHUNK ? len : VN_CSUM_AVX2_CHUNK) / 128;

		len -= blocks * 128;
		while (blocks--) {
			__m256i x0 = _mm256_loadu_si256((const __m256i *)p);
			__m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 32));
			__m256i x2 = _mm256_loadu_si256((const __m256i *)(p + 64));
			__m256i x3 = _mm256_loadu_si256((const __m256i *)(p + 96));

			if (copy) {
				_mm256_storeu_si256((__m256i *)d, x0);
				_mm256_storeu_si256((__m256i *)(d + 32), x1);
				_mm256_storeu_si256((__m256i *)(d + 64), x2);
				_mm256_storeu_si256((__m256i *)(d + 96), x3);
				d += 128;
			}
			AVX2_ADD(a0, a1, x0);
			AVX2_ADD(a2, a3, x1);
			AVX2_ADD(a0, a1, x2);
			AVX2_ADD(a2, a3, x3);
			p += 128;
		}
		if (len >= 128) {       /* another chunk follows: empty the lanes */
			acc = fold64_to32(acc) + avx2_hsum(a0, a1, a2, a3);
			a0 = a1 = a2 = a3 = _mm256_setzero_si256();
		}
	}
	while (len >= 32) {             /* at most three */
		__m256i x = _mm256_loadu_si256((const __m256i *)p);

		if (copy) {
			_mm256_storeu_si256((__m256i *)d, x);
			d += 32;
		}
		AVX2_ADD(a0, a1, x);
		p += 32;
		len -= 32;
	}
	*pp = p;
	*dp = d;
	*lenp = len;
	return fold64_to32(acc) + avx2_hsum(a0, a1, a2, a3);
}
#undef AVX2_ADD

__attribute__((target("avx2")))
static uint64_t sum_avx2(const uint8_t **pp, size_t *lenp, uint64_t acc)
{
	uint8_t *none = NULL;

	return avx2_blocks(pp, &none, lenp, acc, 0);
}

__attribute__((target("avx2")))
static uint64_t copy_sum_avx2(const uint8_t **pp, uint8_t **dp, size_t *lenp, uint64_t acc)
{
	return avx2_blocks(pp, dp, lenp, acc, 1);
}
#endif

/**
 * vn_csum_select() - allow the AVX2 path, or force the SSE2/scalar one
 * @allow_avx2: 1 to use AVX2 when the CPU has it (the default), 0 never
 *
 * For tests and benchmarks, which cover and compare both paths.  Not to be
 * called while other threads are summing.
 *
 * Return: 1 when the AVX2 path is now in use, 0 otherwise
 */
int vn_csum_select(int allow_avx2)
{
#if defined(VN_CSUM_HAVE_AVX2)
	avx2_state = allow_avx2 ? 0 : -1;
	return have_avx2();
#else
	(void)allow_avx2;
	return 0;
#endif
}

#if defined(__SSE2__)
static inline uint64_t drain_lanes(__m128i lanes)
{
	uint32_t v[4];

	_mm_storeu_si128((__m128i *)v, lanes);
	return (uint64_t)v[0] + v[1] + v[2] + v[3];
}

static inline __m128i add_words(__m128i acc, __m128i x)
{
	const __m128i zero = _mm_setzero_si128();

	acc = _mm_add_epi32(acc, _mm_unpacklo_epi16(x, zero));
	return _mm_add_epi32(acc, _mm_unpackhi_epi16(x, zero));
}
#endif

/**
 * vn_csum_partial() - add bytes to a running one's complement sum
 * @buf: data, any alignment
 * @len: number of bytes
 * @sum: running sum (memory order) to continue from, 0 to start
 *
 * Return: the new running sum, partially folded to 32 bits (memory order)
 */
uint32_t vn_csum_partial(const void *buf, size_t len, uint32_t sum)
{
	const uint8_t *p = buf;
	uint64_t acc = sum;

#if defined(VN_CSUM_HAVE_AVX2)
	if (len >= VN_CSUM_AVX2_MIN && have_avx2())
		acc = sum_avx2(&p, &len, acc);
#endif
#if defined(__SSE2__)
	while (len >= 64) {
		__m128i lanes = _mm_setzero_si128();
		size_t blocks = len / 64;

		if (blocks > VN_CSUM_DRAIN_BLOCKS)
			blocks = VN_CSUM_DRAIN_BLOCKS;
		len -= blocks * 64;
		while (blocks--) {
			lanes = add_words(lanes, _mm_loadu_si128((const __m128i *)p));
			lanes = add_words(lanes, _mm_loadu_si128((const __m128i *)(p + 16)));
			lanes = add_words(lanes, _mm_loadu_si128((const __m128i *)(p + 32)));
			lanes = add_words(lanes, _mm_loadu_si128((const __m128i *)(p + 48)));
			p += 64;
		}
		acc += drain_lanes(lanes);
	}
#endif
	return (uint32_t)fold64_to32(sum_tail(p, len, acc));
}

/**
 * vn_csum_copy() - copy bytes and add them to a running sum in one pass
 * @dst: destination, must not overlap @src
 * @src: source
 * @len: number of bytes
 * @sum: running sum (memory order) to continue from
 *
 * Return: the new running sum, as vn_csum_partial() would give for @src
 */
uint32_t vn_csum_copy(void *dst, const void *src, size_t len, uint32_t sum)
{
	const uint8_t *s = src;
	uint8_t *d = dst;
	uint64_t acc = sum;

#if defined(VN_CSUM_HAVE_AVX2)
	if (len >= VN_CSUM_AVX2_MIN && have_avx2())
		acc = copy_sum_avx2(&s, &d, &len, acc);
#endif
#if defined(__SSE2__)
	while (len >= 64) {
		__m128i lanes = _mm_setzero_si128();
		size_t blocks = len / 64;

		if (blocks > VN_CSUM_DRAIN_BLOCKS)
			blocks = VN_CSUM_DRAIN_BLOCKS;
		len -= blocks * 64;
		while (blocks--) {
			__m128i a = _mm_loadu_si128((const __m128i *)s);
			__m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
			__m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
			__m128i e = _mm_loadu_si128((const __m128i *)(s + 48));

			_mm_storeu_si128((__m128i *)d, a);
			_mm_storeu_si128((__m128i *)(d + 16), b);
			_mm_storeu_si128((__m128i *)(d + 32), c);
			_mm_storeu_si128((__m128i *)(d + 48), e);
			lanes = add_words(lanes, a);
			lanes = add_words(lanes, b);
			lanes = add_words(lanes, c);
			lanes = add_words(lanes, e);
			s += 64;
			d += 64;
		}
		acc += drain_lanes(lanes);
	}
#endif
	return (uint32_t)fold64_to32(copy_sum_tail(d, s, len, acc));
}

/**
 * vn_csum_add() - one's complement addition of two running sums
 * @a: running sum
 * @b: running sum
 *
 * Return: a + b with the end-around carry (memory order)
 */
uint32_t vn_csum_add(uint32_t a, uint32_t b)
{
	uint32_t s = a + b;

	return s + (s < a);
}

/**
 * vn_csum_add16() - add one 16-bit word, in memory order, to a running sum
 * @sum: running sum
 * @v: the word as loaded from the packet
 *
 * Return: the new running sum
 */
uint32_t vn_csum_add16(uint32_t sum, uint16_t v)
{
	return vn_csum_add(sum, v);
}

/**
 * vn_csum_fold() - fold a running sum to 16 bits
 * @sum: running sum (memory order)
 *
 * Return: the folded sum, not inverted (memory order)
 */
uint16_t vn_csum_fold(uint32_t sum)
{
	sum = (sum & 0xffffu) + (sum >> 16);
	sum = (sum & 0xffffu) + (sum >> 16);
	return (uint16_t)sum;
}

static inline uint16_t swap16_if_le(uint16_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return __builtin_bswap16(v);
#else
	return v;
#endif
}

/**
 * vn_checksum_be() - Internet checksum of a buffer as a big-endian number
 * @buf: data
 * @len: number of bytes
 * @initial_be: sum to start from, as a big-endian (network) number
 *
 * Return: the folded, NOT inverted sum as a big-endian number, i.e. the value
 * a reader of the packet bytes would see; invert it for a header field.
 */
uint16_t vn_checksum_be(const uint8_t *buf, size_t len, uint16_t initial_be)
{
	uint32_t sum = vn_csum_partial(buf, len, swap16_if_le(initial_be));

	return swap16_if_le(vn_csum_fold(sum));
}
