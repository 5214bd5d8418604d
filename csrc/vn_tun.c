/*
 * vn_tun.c - open Linux tun/tap devices and drive their ioctls.
 *
 * Theory of operation
 *
 * A tap is a file descriptor on /dev/net/tun bound to an interface by
 * TUNSETIFF (struct ifreq: name + IFF_* flags).  Everything else is one ioctl
 * on that descriptor: TUNSETOFFLOAD (TUN_F_* bits: which offloads the kernel
 * may hand to the reader), TUNSETVNETHDRSZ (the virtio_net_hdr size both
 * directions use), TUNGETFEATURES (the IFF_* flags this kernel supports),
 * TUNGETIFF, TUNSETQUEUE (multi-queue attach/detach) and TUNSETPERSIST.
 * Each wrapper returns 0 or a value on success and -errno on failure; policy
 * (which flags to ask for, what a refusal means) stays in Python.
 *
 * The interface is created in the network namespace of the calling thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "vn_tun.h"

/* The clone device every tun/tap is opened through. */
#define VN_TUN_CLONE_DEV "/dev/net/tun"

/* Copy an interface name out of a struct ifreq, always NUL-terminated. */
static int copy_name(const struct ifreq *ifr, char *ifname, size_t ifname_cap)
{
	size_t n = strnlen(ifr->ifr_name, IFNAMSIZ);

	if (!ifname)
		return 0;
	if (ifname_cap <= n)
		return -ENAMETOOLONG;
	memcpy(ifname, ifr->ifr_name, n);
	ifname[n] = '\0';
	return 0;
}

/**
 * vn_tun_open() - open /dev/net/tun and bind it to an interface (TUNSETIFF)
 * @name: interface name, or "" (or NULL) to let the kernel pick one
 * @iff: IFF_* flags (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR ...)
 * @nonblock: nonzero to open the descriptor O_NONBLOCK
 * @ifname: receives the interface's name (may be NULL)
 * @ifname_cap: size of @ifname, at least IFNAMSIZ to be safe
 *
 * The descriptor is close-on-exec.  On failure nothing stays open.
 *
 * Return: the file descriptor, or -errno
 */
int vn_tun_open(const char *name, unsigned int iff, int nonblock, char *ifname,
		size_t ifname_cap)
{
	struct ifreq ifr;
	int fd, rc;

	memset(&ifr, 0, sizeof(ifr));
	if (name) {
		if (strlen(name) >= IFNAMSIZ)
			return -ENAMETOOLONG;
		strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	}
	if (iff > 0xffffu)          /* ifr_flags is a short */
		return -EINVAL;
	ifr.ifr_flags = (short)iff;
	fd = open(VN_TUN_CLONE_DEV, O_RDWR | O_CLOEXEC | (nonblock ? O_NONBLOCK : 0));
	if (fd < 0)
		return -errno;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	rc = copy_name(&ifr, ifname, ifname_cap);
	if (rc) {
		close(fd);
		return rc;
	}
	return fd;
}

/**
 * vn_tun_get_iff() - the interface a descriptor is bound to (TUNGETIFF)
 * @fd: tun/tap descriptor
 * @ifname: receives the name (may be NULL)
 * @ifname_cap: size of @ifname
 * @iff: receives the IFF_* flags of the device (may be NULL)
 *
 * Return: 0, or -errno
 */
int vn_tun_get_iff(int fd, char *ifname, size_t ifname_cap, unsigned int *iff)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	if (ioctl(fd, TUNGETIFF, &ifr) < 0)
		return -errno;
	if (iff)
		*iff = (unsigned short)ifr.ifr_flags;
	return copy_name(&ifr, ifname, ifname_cap);
}

/**
 * vn_tun_get_features() - IFF_* flags this kernel's tun driver supports
 * @fd: a descriptor on /dev/net/tun (bound or not)
 * @features: receives the flags
 *
 * Return: 0, or -errno
 */
int vn_tun_get_features(int fd, unsigned int *features)
{
	unsigned int v = 0;

	if (ioctl(fd, TUNGETFEATURES, &v) < 0)
		return -errno;
	*features = v;
	return 0;
}

/**
 * vn_tun_set_offload() - which offloads the kernel may hand to the reader
 * @fd: tap descriptor
 * @flags: TUN_F_* bits
 *
 * Return: 0, or -errno (EINVAL for a combination the kernel refuses)
 */
int vn_tun_set_offload(int fd, unsigned int flags)
{
	if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags) < 0)
		return -errno;
	return 0;
}

/**
 * vn_tun_get_vnet_hdr_sz() - the virtio_net_hdr size of a tap (TUNGETVNETHDRSZ)
 * @fd: tap descriptor
 *
 * Return: the size in bytes, or -errno
 */
int vn_tun_get_vnet_hdr_sz(int fd)
{
	int sz = 0;

	if (ioctl(fd, TUNGETVNETHDRSZ, &sz) < 0)
		return -errno;
	return sz;
}

/**
 * vn_tun_set_vnet_hdr_sz() - set the virtio_net_hdr size (TUNSETVNETHDRSZ)
 * @fd: tap descriptor
 * @size: bytes; the kernel refuses less than sizeof(struct virtio_net_hdr)
 *
 * Return: 0, or -errno
 */
int vn_tun_set_vnet_hdr_sz(int fd, int size)
{
	if (ioctl(fd, TUNSETVNETHDRSZ, &size) < 0)
		return -errno;
	return 0;
}

/**
 * vn_tun_set_queue() - attach or detach a multi-queue descriptor (TUNSETQUEUE)
 * @fd: descriptor of a queue of an IFF_MULTI_QUEUE device
 * @iff: IFF_ATTACH_QUEUE or IFF_DETACH_QUEUE
 *
 * Return: 0, or -errno
 */
int vn_tun_set_queue(int fd, unsigned int iff)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	if (iff > 0xffffu)
		return -EINVAL;
	ifr.ifr_flags = (short)iff;
	if (ioctl(fd, TUNSETQUEUE, &ifr) < 0)
		return -errno;
	return 0;
}

/**
 * vn_tun_set_persist() - keep (or stop keeping) the interface after close
 * @fd: tun/tap descriptor
 * @persist: nonzero to persist
 *
 * Return: 0, or -errno
 */
int vn_tun_set_persist(int fd, int persist)
{
	if (ioctl(fd, TUNSETPERSIST, (unsigned long)(persist != 0)) < 0)
		return -errno;
	return 0;
}
