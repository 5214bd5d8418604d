"""Linux tun/tap through the C helper (csrc/vn_tun.c).

Opening a tap, its offloads (TUNSETOFFLOAD), its virtio_net_hdr size
(TUNSETVNETHDRSZ) and the queries (TUNGETFEATURES, TUNGETIFF).  Every ioctl
number, IFF_* and TUN_F_* value comes from the kernel headers through the
cffi cdef; failures raise OSError with the kernel's errno.

This module opens /dev/net/tun: only privileged code (vmdnetd, tests) imports
it.  The interface is created in the network namespace of the calling thread.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass, field

from vmdnet._native import check_errno, ffi, lib
from vmdnet.tun import caps

__all__ = [
    "Iff", "TunF", "Tap", "open_tap", "set_offload", "get_features", "get_iff",
    "get_vnet_hdr_sz", "set_vnet_hdr_sz", "set_queue", "set_persist",
    "VNET_HDR_SIZES",
]

log = logging.getLogger(__name__)

# virtio_net_hdr sizes a tap can be set to: 10 (legacy), 12 (num_buffers, as
# VERSION_1 uses) and 20 (hash report); the kernel refuses less than 10.
VNET_HDR_SIZES = (10, 12, 20)
# Room for an interface name: IFNAMSIZ includes the terminating NUL.
_IFNAMSIZ = lib.IFNAMSIZ


class Iff(enum.IntFlag):
    """TUNSETIFF flags (include/uapi/linux/if_tun.h)."""

    TUN = lib.IFF_TUN
    TAP = lib.IFF_TAP
    NAPI = lib.IFF_NAPI
    NAPI_FRAGS = lib.IFF_NAPI_FRAGS
    NO_CARRIER = lib.IFF_NO_CARRIER
    NO_PI = lib.IFF_NO_PI
    ONE_QUEUE = lib.IFF_ONE_QUEUE
    VNET_HDR = lib.IFF_VNET_HDR
    TUN_EXCL = lib.IFF_TUN_EXCL
    MULTI_QUEUE = lib.IFF_MULTI_QUEUE
    ATTACH_QUEUE = lib.IFF_ATTACH_QUEUE
    DETACH_QUEUE = lib.IFF_DETACH_QUEUE
    PERSIST = lib.IFF_PERSIST


class TunF(enum.IntFlag):
    """TUNSETOFFLOAD flags: offloads the kernel may hand to the tap's reader."""

    CSUM = lib.TUN_F_CSUM
    TSO4 = lib.TUN_F_TSO4
    TSO6 = lib.TUN_F_TSO6
    TSO_ECN = lib.TUN_F_TSO_ECN
    UFO = lib.TUN_F_UFO
    USO4 = lib.TUN_F_USO4
    USO6 = lib.TUN_F_USO6


def _check_caps_constants() -> None:
    """caps.py keeps its own TUN_F_* copies (it must import without the C
    helper); they must equal the kernel headers' values."""
    for flag in TunF:
        if getattr(caps, f"TUN_F_{flag.name}") != flag.value:
            raise ImportError(f"vmdnet.tun.caps TUN_F_{flag.name} differs from <linux/if_tun.h>")


_check_caps_constants()


@dataclass
class Tap:
    """One open queue of a tap interface."""

    fd: int
    name: str
    iff: Iff
    vnet_hdr_sz: int = 0
    _closed: bool = field(default=False, repr=False)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Close the descriptor (the interface goes away with its last queue)."""
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _name_buf():
    return ffi.new("char[]", _IFNAMSIZ)


def open_tap(name: str = "", *, vnet_hdr: bool = True, vnet_hdr_sz: int = 12,
             napi: bool = False, multi_queue: bool = False,
             nonblock: bool = False) -> Tap:
    """Create (or attach to) tap `name` with IFF_TAP | IFF_NO_PI.

    `name` "" lets the kernel choose ("tap%d").  With `vnet_hdr` every read and
    write carries a virtio_net_hdr of `vnet_hdr_sz` bytes.  `multi_queue`
    opens one more queue each call with the same name.
    """
    if vnet_hdr and vnet_hdr_sz not in VNET_HDR_SIZES:
        raise ValueError(f"vnet_hdr_sz must be one of {VNET_HDR_SIZES}, not {vnet_hdr_sz}")
    iff = Iff.TAP | Iff.NO_PI
    if vnet_hdr:
        iff |= Iff.VNET_HDR
    if napi:
        iff |= Iff.NAPI
    if multi_queue:
        iff |= Iff.MULTI_QUEUE
    raw_name = name.encode()
    if len(raw_name) >= _IFNAMSIZ:
        raise ValueError(f"interface name {name!r} longer than {_IFNAMSIZ - 1} bytes")
    out = _name_buf()
    fd = check_errno(lib.vn_tun_open(raw_name, int(iff), int(nonblock), out, _IFNAMSIZ),
                     f"open tap {name!r}")
    tap = Tap(fd=fd, name=ffi.string(out).decode(), iff=iff)
    try:
        if vnet_hdr:
            set_vnet_hdr_sz(fd, vnet_hdr_sz)
            tap.vnet_hdr_sz = vnet_hdr_sz
    except BaseException:
        tap.close()
        raise
    log.debug("opened tap %s fd %d flags %s", tap.name, fd, iff)
    return tap


def set_offload(fd: int, flags: int) -> None:
    """TUNSETOFFLOAD: the TUN_F_* offloads the kernel may hand to this reader."""
    check_errno(lib.vn_tun_set_offload(fd, int(flags)), f"TUNSETOFFLOAD {int(flags):#x}")


def get_features(fd: int) -> Iff:
    """TUNGETFEATURES: the IFF_* flags this kernel's tun driver supports."""
    out = ffi.new("unsigned int *")
    check_errno(lib.vn_tun_get_features(fd, out), "TUNGETFEATURES")
    return Iff(out[0])


def get_iff(fd: int) -> tuple[str, Iff]:
    """TUNGETIFF: the interface name and IFF_* flags a descriptor is bound to."""
    out = _name_buf()
    flags = ffi.new("unsigned int *")
    check_errno(lib.vn_tun_get_iff(fd, out, _IFNAMSIZ, flags), "TUNGETIFF")
    return ffi.string(out).decode(), Iff(flags[0])


def get_vnet_hdr_sz(fd: int) -> int:
    """TUNGETVNETHDRSZ: the virtio_net_hdr size of reads and writes."""
    return check_errno(lib.vn_tun_get_vnet_hdr_sz(fd), "TUNGETVNETHDRSZ")


def set_vnet_hdr_sz(fd: int, size: int) -> None:
    """TUNSETVNETHDRSZ: the virtio_net_hdr size of reads and writes."""
    check_errno(lib.vn_tun_set_vnet_hdr_sz(fd, size), f"TUNSETVNETHDRSZ {size}")


def set_queue(fd: int, attach: bool) -> None:
    """TUNSETQUEUE: attach or detach one queue of a multi-queue tap."""
    iff = Iff.ATTACH_QUEUE if attach else Iff.DETACH_QUEUE
    check_errno(lib.vn_tun_set_queue(fd, int(iff)), f"TUNSETQUEUE {iff!r}")


def set_persist(fd: int, persist: bool) -> None:
    """TUNSETPERSIST: keep the interface after its last descriptor closes."""
    check_errno(lib.vn_tun_set_persist(fd, int(persist)), f"TUNSETPERSIST {persist}")
