/*
 * vn_mem.h - the guest memory table: regions shared by the VMM, address translation.
 */
#ifndef VN_MEM_H
#define VN_MEM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* VN_CDEF_BEGIN */
/*
 * Most regions one table holds.  vhost-user's SET_MEM_TABLE carries 8; with
 * CONFIGURE_MEM_SLOTS a VMM may add more, bounded by the x86 KVM memslot
 * count (KVM_USER_MEM_SLOTS, 509).  Lookup is a binary search, so the large
 * table costs nothing per packet.
 */
#define VN_MEM_MAX_REGIONS 509

/* One region of guest RAM as the VMM described it, and where we mapped it. */
struct vn_mem_region {
	uint64_t gpa;           /* guest physical address of the first byte */
	uint64_t size;          /* bytes */
	uint64_t uaddr;         /* the VMM's virtual address of the first byte */
	uint64_t mmap_offset;   /* offset of the first byte in the VMM's fd */
	uint8_t *host;          /* our address of the first byte */
	void *map_base;         /* what mmap() returned (page aligned) */
	uint64_t map_len;       /* length passed to mmap() */
	uint32_t sealed;        /* the fd had F_SEAL_SHRINK: cannot shrink under us */
	uint32_t pad_;
};

/* The table; regions sorted by gpa, none overlapping in gpa or uaddr. */
struct vn_mem {
	uint32_t nregions;
	uint32_t pad_;
	struct vn_mem_region regions[VN_MEM_MAX_REGIONS];
};

void vn_mem_init(struct vn_mem *mem);
int vn_mem_map_region(struct vn_mem *mem, int fd, uint64_t gpa, uint64_t size,
		      uint64_t uaddr, uint64_t mmap_offset);
int vn_mem_unmap_region(struct vn_mem *mem, uint64_t gpa, uint64_t size);
void vn_mem_unmap_all(struct vn_mem *mem);
void *vn_gpa_to_host(const struct vn_mem *mem, uint64_t gpa, uint64_t len);
void *vn_uaddr_to_host(const struct vn_mem *mem, uint64_t uaddr, uint64_t len);
uint64_t vn_mem_sigbus_pages(void);
/* VN_CDEF_END */

/* vn_gpa_to_iov() failures. */
#define VN_IOV_FAULT (-1)       /* some byte is in no region */
#define VN_IOV_FULL (-2)        /* more pieces than iovecs given */

int vn_gpa_to_iov(const struct vn_mem *mem, uint64_t gpa, uint64_t len,
		  struct iovec *iov, uint32_t max_iov);
size_t vn_iov_to_buf(const struct iovec *iov, uint32_t niov, size_t skip,
		     void *buf, size_t len);
size_t vn_buf_to_iov(const struct iovec *iov, uint32_t niov, size_t skip,
		     const void *buf, size_t len);

#endif
