/*
 * vn_csum.h - RFC 1071 Internet checksum.
 *
 * Sums are kept in "memory order": the 16-bit words are added as the CPU loads
 * them, so a folded sum stored back with a native 16-bit store lands in the
 * packet with the right bytes on either endianness (RFC 1071, section 2(B)).
 */
#ifndef VN_CSUM_H
#define VN_CSUM_H

#include <stddef.h>
#include <stdint.h>

/* VN_CDEF_BEGIN */
uint32_t vn_csum_partial(const void *buf, size_t len, uint32_t sum);
uint32_t vn_csum_copy(void *dst, const void *src, size_t len, uint32_t sum);
uint16_t vn_csum_fold(uint32_t sum);
uint16_t vn_checksum_be(const uint8_t *buf, size_t len, uint16_t initial_be);
int vn_csum_select(int allow_avx2);
/* VN_CDEF_END */

uint32_t vn_csum_add(uint32_t a, uint32_t b);
uint32_t vn_csum_add16(uint32_t sum, uint16_t v);

#endif
