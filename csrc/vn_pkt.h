/*
 * vn_pkt.h - bounds-checked parsing of Ethernet/VLAN/IPv4/IPv6/TCP/UDP headers.
 */
#ifndef VN_PKT_H
#define VN_PKT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* VN_CDEF_BEGIN */
#define VN_ETH_HLEN 14
#define VN_VLAN_HLEN 4
/* Up to two stacked tags (802.1ad outer + 802.1Q inner: QinQ).  Linux's GSO
 * walks deeper stacks (7 tags seen); GSO on those is refused (vn_offload.c). */
#define VN_MAX_VLAN_TAGS 2
/* IPv6 extension headers walked before giving up (hop-by-hop, routing, dest opts). */
#define VN_MAX_IPV6_EXT 8
/* A 64 KiB IPv4 packet plus an Ethernet header and two VLAN tags.  A maximal
 * IPv6 packet is 40 bytes longer (its length field leaves out the fixed
 * header); a tap would take it, vn_validate refuses it (VN_BAD_FRAME_LONG). */
#define VN_MAX_FRAME 65557

struct vn_pkt {
	uint16_t l3_off;        /* IP header offset from the frame start */
	uint16_t l4_off;        /* TCP/UDP header offset, 0 when not found */
	uint16_t l4_hlen;       /* TCP data offset * 4, or 8 for UDP */
	uint16_t v6_frag_ins;   /* IPv6: offset where a fragment header goes */
	uint16_t v6_prevhdr;    /* IPv6: offset of the next-header byte before it */
	uint8_t ip_version;     /* 4, 6, or 0 when the frame is not IP */
	uint8_t l4_proto;       /* 6 (TCP), 17 (UDP), other, or 0 when not IP */
	uint8_t is_fragment;    /* IPv4 MF/offset set, or an IPv6 fragment header */
	uint8_t pad_;
};

int vn_parse(const uint8_t *frame, size_t len, struct vn_pkt *pkt);
/* VN_CDEF_END */

#define VN_ETH_P_IP 0x0800
#define VN_ETH_P_IPV6 0x86dd
#define VN_ETH_P_8021Q 0x8100
#define VN_ETH_P_8021AD 0x88a8
#define VN_IPPROTO_HOPOPTS 0
#define VN_IPPROTO_TCP 6
#define VN_IPPROTO_UDP 17
#define VN_IPPROTO_ROUTING 43
#define VN_IPPROTO_FRAGMENT 44
#define VN_IPPROTO_DSTOPTS 60
#define VN_IPV4_HLEN 20
#define VN_IPV6_HLEN 40
#define VN_TCP_HLEN 20
#define VN_UDP_HLEN 8
#define VN_IPV6_FRAG_HLEN 8

static inline uint16_t vn_get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t vn_get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* 16 bits as stored (memory order, for one's complement sums), any alignment. */
static inline uint16_t vn_load16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

/* Store 16 bits in memory order, any alignment. */
static inline void vn_store16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

static inline void vn_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void vn_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

#endif
