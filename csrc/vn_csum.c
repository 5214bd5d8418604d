/*
 * vn_csum.c - RFC 1071 Internet checksum, plain and fused with a copy.
 *
 * Theory of operation: the one's complement sum is independent of byte order
 * when both the data and the result stay in memory order (RFC 1071 2(B)), and
 * 2^16 == 1 modulo 0xffff, so wider words may be summed and folded at the end.
 * The SSE2 loop widens 16-bit words to 32-bit lanes (no carries to track) and
 * empties the lanes into a 64-bit accumulator before they can overflow; the
 * tail and non-SSE2 builds sum 32-bit words into 64 bits.  Callers that sum a
 * packet in pieces must start each piece at an even offset from the checksum's
 * start (every caller in vmdnet does: headers are even-sized).
 */
#include <string.h>

#include "vn_csum.h"

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

static uint64_t sum_tail(const uint8_t *p, size_t len, uint64_t acc)
{
	uint32_t w32;
	uint16_t w16;

	while (len >= 4) {
		memcpy(&w32, p, 4);
		acc += w32;
		p += 4;
		len -= 4;
	}
	if (len >= 2) {
		memcpy(&w16, p, 2);
		acc += w16;
		p += 2;
		len -= 2;
	}
	if (len) {
		/* The odd byte is the first byte of a zero-padded word. */
		uint8_t pad[2] = { p[0], 0 };

		memcpy(&w16, pad, 2);
		acc += w16;
	}
	return acc;
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
	memcpy(d, s, len);
	return (uint32_t)fold64_to32(sum_tail(s, len, acc));
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
