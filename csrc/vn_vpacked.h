/*
 * vn_vpacked.h - packed virtqueues (virtio 1.3, 2.8): the ring-type half of vn_vring.c.
 *
 * Internal to the C helper: vn_vring.c calls these when vq->packed is set,
 * so the data path (vn_netq.c) drives both ring types through one API.
 */
#ifndef VN_VPACKED_H
#define VN_VPACKED_H

#include <stdint.h>

#include "vn_mem.h"
#include "vn_vring.h"

int vn_pk_setup(struct vn_vring *vq, const struct vn_mem *mem, uint16_t base);
int vn_pk_translate(struct vn_vring *vq, const struct vn_mem *mem);
uint16_t vn_pk_base(const struct vn_vring *vq);
void vn_pk_free(struct vn_packed *pk);
int vn_pk_avail_count(struct vn_vring *vq);
int vn_pk_avail_head(struct vn_vring *vq, uint16_t idx, uint16_t *head);
int vn_pk_chain_walk(struct vn_vring *vq, const struct vn_mem *mem, uint16_t head,
		     int want_write, struct iovec *iov, uint32_t max_iov, uint64_t max_len,
		     struct vn_chain *c);
void vn_pk_push(struct vn_vring *vq, uint16_t head, uint32_t len);
void vn_pk_publish(struct vn_vring *vq);
int vn_pk_need_signal(struct vn_vring *vq);
void vn_pk_notify_disable(struct vn_vring *vq);
void vn_pk_notify_request(struct vn_vring *vq);

#endif
