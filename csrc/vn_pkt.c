/*
 * vn_pkt.c - find the network and transport headers of a frame.
 *
 * Theory of operation: one forward walk, every read preceded by a length
 * check against the frame.  The walk follows what Linux's GSO layer follows
 * (skb_network_protocol for VLAN tags; ipv6_gso_pull_exthdrs for hop-by-hop,
 * routing and destination options), so that "parses" here means "the kernel
 * would find the same transport header".  It stops sooner than the kernel,
 * at VN_MAX_VLAN_TAGS tags and VN_MAX_IPV6_EXT extension headers (the kernel
 * segments frames with 7 tags and with 12 extension headers, measured through
 * a bridge); vn_validate refuses GSO on deeper frames.  It also records where
 * an IPv6 fragment header would be inserted (the end of the unfragmentable
 * part, the rule of ip6_find_1stfragopt) for software UFO.
 */
#include <string.h>

#include "vn_pkt.h"

static int parse_ipv4(const uint8_t *f, size_t len, struct vn_pkt *pkt)
{
	const uint8_t *ip = f + pkt->l3_off;
	size_t ihl;

	if (len < (size_t)pkt->l3_off + VN_IPV4_HLEN || (ip[0] >> 4) != 4)
		return -1;
	ihl = (size_t)(ip[0] & 0x0f) * 4;
	if (ihl < VN_IPV4_HLEN || len < pkt->l3_off + ihl)
		return -1;
	pkt->ip_version = 4;
	pkt->l4_proto = ip[9];
	pkt->is_fragment = (vn_get16(ip + 6) & 0x3fff) != 0;
	pkt->l4_off = (uint16_t)(pkt->l3_off + ihl);
	return 0;
}

static int parse_ipv6(const uint8_t *f, size_t len, struct vn_pkt *pkt)
{
	size_t off = (size_t)pkt->l3_off + VN_IPV6_HLEN;
	size_t prevhdr = (size_t)pkt->l3_off + 6;
	int seen_routing = 0, frag_ins_set = 0;
	uint8_t nh;
	int i;

	if (len < off || (f[pkt->l3_off] >> 4) != 6)
		return -1;
	pkt->ip_version = 6;
	nh = f[prevhdr];
	for (i = 0; i < VN_MAX_IPV6_EXT; i++) {
		size_t hlen;

		if (nh != VN_IPPROTO_HOPOPTS && nh != VN_IPPROTO_ROUTING &&
		    nh != VN_IPPROTO_DSTOPTS)
			break;
		/* Destination options after a routing header are fragmentable. */
		if (nh == VN_IPPROTO_DSTOPTS && seen_routing && !frag_ins_set) {
			pkt->v6_frag_ins = (uint16_t)off;
			pkt->v6_prevhdr = (uint16_t)prevhdr;
			frag_ins_set = 1;
		}
		if (nh == VN_IPPROTO_ROUTING)
			seen_routing = 1;
		if (len < off + 8)
			return -1;
		hlen = ((size_t)f[off + 1] + 1) * 8;
		if (len < off + hlen)
			return -1;
		prevhdr = off;
		nh = f[off];
		off += hlen;
	}
	if (i == VN_MAX_IPV6_EXT && (nh == VN_IPPROTO_HOPOPTS || nh == VN_IPPROTO_ROUTING ||
				     nh == VN_IPPROTO_DSTOPTS))
		return -1;
	if (!frag_ins_set) {
		pkt->v6_frag_ins = (uint16_t)off;
		pkt->v6_prevhdr = (uint16_t)prevhdr;
	}
	pkt->l4_proto = nh;
	pkt->is_fragment = nh == VN_IPPROTO_FRAGMENT;
	pkt->l4_off = (uint16_t)off;
	return 0;
}

/**
 * vn_parse() - locate the IP and TCP/UDP headers of an Ethernet frame
 * @frame: the frame, starting at the destination MAC
 * @len: its length in bytes
 * @pkt: filled in; zeroed first
 *
 * The transport header is reported (l4_off, l4_hlen) only when it is TCP or
 * UDP, not a fragment, and lies whole inside the frame.
 *
 * Return: 0 when the frame is IPv4 or IPv6 with a parseable IP header,
 * -1 otherwise (not IP, truncated, malformed)
 */
int vn_parse(const uint8_t *frame, size_t len, struct vn_pkt *pkt)
{
	size_t off = VN_ETH_HLEN;
	uint16_t proto;
	int tags = 0, rc;

	memset(pkt, 0, sizeof(*pkt));
	if (len < VN_ETH_HLEN || len > VN_MAX_FRAME)
		return -1;
	proto = vn_get16(frame + 12);
	while ((proto == VN_ETH_P_8021Q || proto == VN_ETH_P_8021AD) &&
	       tags < VN_MAX_VLAN_TAGS) {
		if (len < off + VN_VLAN_HLEN)
			return -1;
		proto = vn_get16(frame + off + 2);
		off += VN_VLAN_HLEN;
		tags++;
	}
	pkt->l3_off = (uint16_t)off;
	if (proto == VN_ETH_P_IP)
		rc = parse_ipv4(frame, len, pkt);
	else if (proto == VN_ETH_P_IPV6)
		rc = parse_ipv6(frame, len, pkt);
	else
		return -1;
	if (rc)
		return rc;

	if (pkt->is_fragment) {
		pkt->l4_off = 0;
		return 0;
	}
	if (pkt->l4_proto == VN_IPPROTO_TCP) {
		size_t doff;

		if (len < (size_t)pkt->l4_off + VN_TCP_HLEN)
			goto no_l4;
		doff = (size_t)(frame[pkt->l4_off + 12] >> 4) * 4;
		if (doff < VN_TCP_HLEN || len < pkt->l4_off + doff)
			goto no_l4;
		pkt->l4_hlen = (uint16_t)doff;
	} else if (pkt->l4_proto == VN_IPPROTO_UDP) {
		if (len < (size_t)pkt->l4_off + VN_UDP_HLEN)
			goto no_l4;
		pkt->l4_hlen = VN_UDP_HLEN;
	} else {
		goto no_l4;
	}
	return 0;
no_l4:
	pkt->l4_off = 0;
	pkt->l4_hlen = 0;
	return 0;
}
