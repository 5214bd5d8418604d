/*
 * vn_mem.c - the guest memory table: map the VMM's regions, translate addresses.
 *
 * Theory of operation
 *
 * The VMM (QEMU, over vhost-user SET_MEM_TABLE / ADD_MEM_REG) hands us one fd
 * per region of guest RAM with its guest physical address (gpa), size, the
 * VMM's own virtual address of it (uaddr, which SET_VRING_ADDR speaks in) and
 * the region's offset in the fd.  Every one of those numbers is untrusted:
 *
 *   - size 0, or any of gpa + size, uaddr + size, mmap_offset + size that
 *     overflows 64 bits, is refused;
 *   - a region overlapping another in gpa or in uaddr is refused, so every
 *     address translates in at most one way;
 *   - the fd must be a regular file (memfd, tmpfs, hugetlbfs) at least
 *     mmap_offset + size long: mapping past its end would let the VMM make
 *     us SIGBUS on first touch.  A VMM can still truncate an unsealed file
 *     later; `sealed` records whether the fd carries F_SEAL_SHRINK (QEMU's
 *     memory-backend-memfd seals by default) so the caller can warn.
 *
 * Guest RAM that vanishes: a VMM that truncates an unsealed file (or a
 * hugetlbfs file that runs out of pages) turns our next access to the lost
 * pages into SIGBUS, which would end the process.  Every mapping is listed in
 * a process-wide guard table, and a SIGBUS handler (installed with the first
 * mapping) replaces the faulting page of a guarded mapping with a private
 * zero page and returns: the access is retried and reads zeros, which the
 * data path treats like any other guest garbage.  vn_mem_sigbus_pages()
 * counts the pages replaced; the caller polls it and drops that VMM (the
 * RAM is gone, the device cannot go on).  A SIGBUS outside guest RAM goes
 * to the handler that was there before, or kills the process as by default.
 *
 * mmap() needs a page-aligned offset; a region whose mmap_offset is not one
 * is mapped from the page below and `host` points past the slack.
 *
 * Translation accepts a range only when every byte lies in mapped memory:
 * vn_gpa_to_host() and vn_uaddr_to_host() want it inside one region (the
 * caller needs one contiguous pointer: rings, indirect tables);
 * vn_gpa_to_iov() splits a buffer that runs from one region into the next
 * into one iovec per region, as QEMU does, since guest-physically contiguous
 * RAM may be described as adjacent regions.  Ranges are compared by
 * subtraction from a region's start, never by adding to a guest value, so no
 * guest number can overflow a comparison.
 *
 * The table is changed only while no data path thread uses it (the caller
 * stops the queues around SET_MEM_TABLE); readers take no lock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vn_mem.h"

/**
 * vn_mem_init() - make an empty table
 * @mem: the table
 */
void vn_mem_init(struct vn_mem *mem)
{
	memset(mem, 0, sizeof(*mem));
}

/*
 * The guard table: every guest mapping of the process, for the SIGBUS
 * handler.  Slots are claimed and released by the thread that changes memory
 * tables (never while a queue runs on that memory); the handler only reads.
 * Room for two full tables (the old and the new one while a table is
 * replaced); mappings beyond it are simply not guarded.
 */
#define GUARD_SLOTS (2 * VN_MEM_MAX_REGIONS)

struct guard {
	uintptr_t base;         /* 0: free slot */
	uintptr_t len;
};

static struct guard guards[GUARD_SLOTS];
static uint64_t sigbus_pages;           /* pages replaced; atomic */
static uintptr_t guard_page_size;
static struct sigaction prev_sigbus;
static int sigbus_installed;

/* Replace the page at @addr with a zero page if it lies in guest RAM. */
static int guard_fixup(uintptr_t addr)
{
	uint32_t i;

	for (i = 0; i < GUARD_SLOTS; i++) {
		uintptr_t base = __atomic_load_n(&guards[i].base, __ATOMIC_ACQUIRE);
		uintptr_t len = __atomic_load_n(&guards[i].len, __ATOMIC_RELAXED);
		void *page;

		if (base == 0 || addr - base >= len)
			continue;
		page = (void *)(addr & ~(guard_page_size - 1));
		if (mmap(page, guard_page_size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
			return 0;
		__atomic_add_fetch(&sigbus_pages, 1, __ATOMIC_RELAXED);
		return 1;
	}
	return 0;
}

/* SIGBUS: survive lost guest RAM, pass anything else on (see Theory of operation). */
static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	struct sigaction dfl;

	if (guard_fixup((uintptr_t)si->si_addr))
		return;
	if (prev_sigbus.sa_flags & SA_SIGINFO) {
		prev_sigbus.sa_sigaction(sig, si, ctx);
		return;
	}
	if (prev_sigbus.sa_handler != SIG_DFL && prev_sigbus.sa_handler != SIG_IGN) {
		prev_sigbus.sa_handler(sig);
		return;
	}
	/* Default action: pending until we return, then it ends the process. */
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigaction(SIGBUS, &dfl, NULL);
	raise(SIGBUS);
}

/* Install the SIGBUS handler once; 0 or -errno. */
static int guard_install(long page)
{
	struct sigaction sa;

	if (sigbus_installed)
		return 0;
	guard_page_size = (uintptr_t)page;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, &prev_sigbus) < 0)
		return -errno;
	sigbus_installed = 1;
	return 0;
}

static void guard_add(const void *base, uint64_t len)
{
	uint32_t i;

	for (i = 0; i < GUARD_SLOTS; i++) {
		if (__atomic_load_n(&guards[i].base, __ATOMIC_RELAXED) != 0)
			continue;
		__atomic_store_n(&guards[i].len, (uintptr_t)len, __ATOMIC_RELAXED);
		__atomic_store_n(&guards[i].base, (uintptr_t)base, __ATOMIC_RELEASE);
		return;
	}
}

static void guard_remove(const void *base)
{
	uint32_t i;

	for (i = 0; i < GUARD_SLOTS; i++) {
		if (__atomic_load_n(&guards[i].base, __ATOMIC_RELAXED) == (uintptr_t)base) {
			__atomic_store_n(&guards[i].base, 0, __ATOMIC_RELEASE);
			return;
		}
	}
}

/**
 * vn_mem_sigbus_pages() - guest RAM pages lost under us so far (process-wide)
 *
 * Each is a page of a guest mapping that raised SIGBUS (its file was
 * truncated) and now reads zeros.  A change means the VMM took RAM away.
 *
 * Return: the count since the process started
 */
uint64_t vn_mem_sigbus_pages(void)
{
	return __atomic_load_n(&sigbus_pages, __ATOMIC_RELAXED);
}

/* Do [a, a+alen) and [b, b+blen) share a byte?  Neither end overflows (checked). */
static int ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/* Check a new region's numbers against 64-bit overflow and the existing table. */
static int check_region(const struct vn_mem *mem, uint64_t gpa, uint64_t size,
			uint64_t uaddr, uint64_t mmap_offset)
{
	uint32_t i;

	if (size == 0)
		return -EINVAL;
	if (size > UINT64_MAX - gpa || size > UINT64_MAX - uaddr ||
	    size > UINT64_MAX - mmap_offset || size > SIZE_MAX)
		return -EOVERFLOW;
	if (mem->nregions >= VN_MEM_MAX_REGIONS)
		return -ENOSPC;
	for (i = 0; i < mem->nregions; i++) {
		const struct vn_mem_region *r = &mem->regions[i];

		if (ranges_overlap(gpa, size, r->gpa, r->size) ||
		    ranges_overlap(uaddr, size, r->uaddr, r->size))
			return -EEXIST;
	}
	return 0;
}

/* Refuse fds that are not regular files or are too short for the region. */
static int check_fd(int fd, uint64_t size, uint64_t mmap_offset, uint32_t *sealed)
{
	struct stat st;
	int seals;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -ENODEV;
	if (st.st_size < 0 || (uint64_t)st.st_size < mmap_offset + size)
		return -ENXIO;
	seals = fcntl(fd, F_GET_SEALS);
	*sealed = seals >= 0 && (seals & F_SEAL_SHRINK) != 0;
	return 0;
}

/* Insert @r keeping the table sorted by gpa. */
static void insert_sorted(struct vn_mem *mem, const struct vn_mem_region *r)
{
	uint32_t i = mem->nregions;

	while (i > 0 && mem->regions[i - 1].gpa > r->gpa) {
		mem->regions[i] = mem->regions[i - 1];
		i--;
	}
	mem->regions[i] = *r;
	mem->nregions++;
}

/**
 * vn_mem_map_region() - map one region of guest RAM from the VMM's fd
 * @mem: the table
 * @fd: the region's fd (not closed here; the caller may close it afterwards)
 * @gpa: guest physical address of the region
 * @size: its size in bytes
 * @uaddr: the VMM's virtual address of it
 * @mmap_offset: its offset in @fd (need not be page aligned)
 *
 * Return: 0, or -EINVAL (size 0), -EOVERFLOW (a range wraps), -ENOSPC (table
 * full), -EEXIST (overlaps a mapped region), -ENODEV (not a regular file),
 * -ENXIO (file shorter than mmap_offset + size), -errno from fstat/mmap
 */
int vn_mem_map_region(struct vn_mem *mem, int fd, uint64_t gpa, uint64_t size,
		      uint64_t uaddr, uint64_t mmap_offset)
{
	struct vn_mem_region r;
	long page = sysconf(_SC_PAGESIZE);
	uint64_t aligned, delta;
	void *base;
	int rc;

	memset(&r, 0, sizeof(r));
	rc = check_region(mem, gpa, size, uaddr, mmap_offset);
	if (rc)
		return rc;
	rc = check_fd(fd, size, mmap_offset, &r.sealed);
	if (rc)
		return rc;
	if (page <= 0)
		return -EINVAL;
	rc = guard_install(page);
	if (rc)
		return rc;
	aligned = mmap_offset & ~((uint64_t)page - 1);
	delta = mmap_offset - aligned;
	if (size > SIZE_MAX - delta || aligned > (uint64_t)INT64_MAX)
		return -EOVERFLOW;
	base = mmap(NULL, (size_t)(size + delta), PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		    (off_t)aligned);
	if (base == MAP_FAILED)
		return -errno;
	/* Guest RAM has no business in our core dumps; failure is harmless. */
	(void)madvise(base, (size_t)(size + delta), MADV_DONTDUMP);
	r.gpa = gpa;
	r.size = size;
	r.uaddr = uaddr;
	r.mmap_offset = mmap_offset;
	r.map_base = base;
	r.map_len = size + delta;
	r.host = (uint8_t *)base + delta;
	guard_add(base, r.map_len);
	insert_sorted(mem, &r);
	return 0;
}

/**
 * vn_mem_unmap_region() - unmap the region that starts at @gpa and is @size long
 * @mem: the table
 * @gpa: the region's guest physical address
 * @size: its size
 *
 * Return: 0, or -ENOENT when no region matches exactly
 */
int vn_mem_unmap_region(struct vn_mem *mem, uint64_t gpa, uint64_t size)
{
	uint32_t i;

	for (i = 0; i < mem->nregions; i++) {
		struct vn_mem_region *r = &mem->regions[i];

		if (r->gpa != gpa || r->size != size)
			continue;
		guard_remove(r->map_base);
		munmap(r->map_base, (size_t)r->map_len);
		memmove(r, r + 1, (mem->nregions - i - 1) * sizeof(*r));
		mem->nregions--;
		memset(&mem->regions[mem->nregions], 0, sizeof(*r));
		return 0;
	}
	return -ENOENT;
}

/**
 * vn_mem_unmap_all() - unmap every region and empty the table
 * @mem: the table
 */
void vn_mem_unmap_all(struct vn_mem *mem)
{
	uint32_t i;

	for (i = 0; i < mem->nregions; i++) {
		guard_remove(mem->regions[i].map_base);
		munmap(mem->regions[i].map_base, (size_t)mem->regions[i].map_len);
	}
	vn_mem_init(mem);
}

/* The region holding guest physical address @gpa, or NULL (binary search). */
static const struct vn_mem_region *find_gpa(const struct vn_mem *mem, uint64_t gpa)
{
	uint32_t lo = 0, hi = mem->nregions;
	const struct vn_mem_region *r;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (mem->regions[mid].gpa <= gpa)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	r = &mem->regions[lo - 1];
	return gpa - r->gpa < r->size ? r : NULL;
}

/**
 * vn_gpa_to_host() - our pointer to guest physical range [gpa, gpa + len)
 * @mem: the table
 * @gpa: guest physical address
 * @len: length; 0 asks only that @gpa itself be mapped
 *
 * Return: the pointer when the whole range lies inside one region, else NULL
 */
void *vn_gpa_to_host(const struct vn_mem *mem, uint64_t gpa, uint64_t len)
{
	const struct vn_mem_region *r = find_gpa(mem, gpa);
	uint64_t off;

	if (!r)
		return NULL;
	off = gpa - r->gpa;
	if (len > r->size - off)
		return NULL;
	return r->host + off;
}

/**
 * vn_uaddr_to_host() - our pointer to the VMM's virtual range [uaddr, uaddr + len)
 * @mem: the table
 * @uaddr: address in the VMM's address space (vhost-user SET_VRING_ADDR)
 * @len: length; 0 asks only that @uaddr itself be mapped
 *
 * A linear search: used when rings are set up, not per packet.
 *
 * Return: the pointer when the whole range lies inside one region, else NULL
 */
void *vn_uaddr_to_host(const struct vn_mem *mem, uint64_t uaddr, uint64_t len)
{
	uint32_t i;

	for (i = 0; i < mem->nregions; i++) {
		const struct vn_mem_region *r = &mem->regions[i];
		uint64_t off = uaddr - r->uaddr;

		if (uaddr >= r->uaddr && off < r->size)
			return len <= r->size - off ? r->host + off : NULL;
	}
	return NULL;
}

/**
 * vn_gpa_to_iov() - describe guest range [gpa, gpa + len) as iovecs
 * @mem: the table
 * @gpa: guest physical address
 * @len: length (0 gives no iovec)
 * @iov: receives one iovec per region the range crosses
 * @max_iov: room in @iov
 *
 * Return: iovecs written, VN_IOV_FAULT when a byte is outside guest memory,
 * VN_IOV_FULL when more than @max_iov are needed
 */
int vn_gpa_to_iov(const struct vn_mem *mem, uint64_t gpa, uint64_t len,
		  struct iovec *iov, uint32_t max_iov)
{
	uint32_t n = 0;

	while (len > 0) {
		const struct vn_mem_region *r = find_gpa(mem, gpa);
		uint64_t off, chunk;

		if (!r)
			return VN_IOV_FAULT;
		if (n == max_iov)
			return VN_IOV_FULL;
		off = gpa - r->gpa;
		chunk = r->size - off;
		if (chunk > len)
			chunk = len;
		iov[n].iov_base = r->host + off;
		iov[n].iov_len = (size_t)chunk;
		n++;
		len -= chunk;
		/* Cannot wrap: gpa + chunk ends inside a region, checked at map time. */
		gpa += chunk;
	}
	return (int)n;
}

/* Copy @len bytes between @buf and the iovec list from its byte @skip on. */
static size_t iov_copy(const struct iovec *iov, uint32_t niov, size_t skip,
		       uint8_t *buf, size_t len, int to_iov)
{
	size_t done = 0;
	uint32_t i;

	for (i = 0; i < niov && done < len; i++) {
		uint8_t *p = (uint8_t *)iov[i].iov_base;
		size_t n = iov[i].iov_len;

		if (skip >= n) {
			skip -= n;
			continue;
		}
		n -= skip;
		if (n > len - done)
			n = len - done;
		if (to_iov)
			memcpy(p + skip, buf + done, n);
		else
			memcpy(buf + done, p + skip, n);
		done += n;
		skip = 0;
	}
	return done;
}

/**
 * vn_iov_to_buf() - copy bytes out of an iovec list
 * @iov: the list
 * @niov: its length
 * @skip: bytes to skip first
 * @buf: destination
 * @len: bytes wanted
 *
 * Return: bytes copied (less than @len when the list is shorter)
 */
size_t vn_iov_to_buf(const struct iovec *iov, uint32_t niov, size_t skip,
		     void *buf, size_t len)
{
	return iov_copy(iov, niov, skip, buf, len, 0);
}

/**
 * vn_buf_to_iov() - copy bytes into an iovec list
 * @iov: the list
 * @niov: its length
 * @skip: bytes of the list to skip first
 * @buf: source
 * @len: bytes to copy
 *
 * Return: bytes copied (less than @len when the list is shorter)
 */
size_t vn_buf_to_iov(const struct iovec *iov, uint32_t niov, size_t skip,
		     const void *buf, size_t len)
{
	return iov_copy(iov, niov, skip, (uint8_t *)(uintptr_t)buf, len, 1);
}
