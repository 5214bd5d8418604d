"""vmdnet.tun.linux against the real tun driver, inside a namespace of our own.

Checks that every wrapper reaches the kernel (values read back through the
matching GET ioctl or netlink), and that kernel refusals come back as OSError
with the kernel's errno.  The TUNSETOFFLOAD rules asserted here are the kernel's
(DESIGN.md): they prove the flags arrive as the kernel's own constants.
"""

from __future__ import annotations

import errno
import os

import pytest
from netns import NetNS
from pyroute2 import IPRoute

from vmdnet.tun import (
    Iff,
    TunF,
    get_features,
    get_iff,
    get_vnet_hdr_sz,
    open_tap,
    set_offload,
    set_persist,
    set_queue,
    set_vnet_hdr_sz,
)


@pytest.fixture(scope="module")
def ns():
    with NetNS("tun") as n:
        yield n


def _links(ns: NetNS) -> set[str]:
    with ns.entered(), IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_open_tap_names_flags_and_header_size(ns: NetNS) -> None:
    with ns.entered():
        tap = open_tap("vntest0")
    with tap:
        name, iff = get_iff(tap.fd)
        assert name == tap.name == "vntest0"
        assert iff & (Iff.TAP | Iff.NO_PI | Iff.VNET_HDR) == Iff.TAP | Iff.NO_PI | Iff.VNET_HDR
        assert not iff & Iff.TUN
        assert get_vnet_hdr_sz(tap.fd) == tap.vnet_hdr_sz == 12
        assert "vntest0" in _links(ns)
    assert "vntest0" not in _links(ns)


def test_tap_lives_in_the_namespace_only(ns: NetNS) -> None:
    with ns.entered():
        tap = open_tap("vnonlyhere")
    with tap, IPRoute() as outside:
        assert not outside.link_lookup(ifname="vnonlyhere")
        assert "vnonlyhere" in _links(ns)


def test_kernel_chosen_name(ns: NetNS) -> None:
    with ns.entered(), open_tap("") as tap:
        assert tap.name.startswith("tap")
        assert get_iff(tap.fd)[0] == tap.name


@pytest.mark.parametrize("size", [10, 12, 20])
def test_vnet_hdr_sizes(ns: NetNS, size: int) -> None:
    with ns.entered(), open_tap("vnsz", vnet_hdr_sz=size) as tap:
        assert get_vnet_hdr_sz(tap.fd) == size
        set_vnet_hdr_sz(tap.fd, 12)
        assert get_vnet_hdr_sz(tap.fd) == 12


def test_vnet_hdr_size_refusals(ns: NetNS) -> None:
    with pytest.raises(ValueError):
        open_tap("vnbad", vnet_hdr_sz=11)
    with ns.entered(), open_tap("vnsz") as tap:
        with pytest.raises(OSError) as info:
            set_vnet_hdr_sz(tap.fd, 8)      # below sizeof(struct virtio_net_hdr)
        assert info.value.errno == errno.EINVAL


def test_no_vnet_hdr(ns: NetNS) -> None:
    with ns.entered(), open_tap("vnplain", vnet_hdr=False) as tap:
        assert not get_iff(tap.fd)[1] & Iff.VNET_HDR
        assert tap.vnet_hdr_sz == 0


def test_features_include_what_vmdnet_uses(ns: NetNS) -> None:
    with ns.entered(), open_tap("vnfeat") as tap:
        feats = get_features(tap.fd)
    for flag in (Iff.TAP, Iff.NO_PI, Iff.VNET_HDR, Iff.MULTI_QUEUE, Iff.NAPI):
        assert flag in feats, flag


@pytest.mark.parametrize("flags", [
    0, TunF.CSUM, TunF.CSUM | TunF.TSO4 | TunF.TSO6 | TunF.TSO_ECN,
    TunF.CSUM | TunF.USO4 | TunF.USO6, TunF.CSUM | TunF.UFO,
])
def test_set_offload_accepted(ns: NetNS, flags: int) -> None:
    with ns.entered(), open_tap("vnoff") as tap:
        set_offload(tap.fd, flags)


@pytest.mark.parametrize("flags", [
    TunF.TSO4,                               # needs CSUM
    TunF.CSUM | TunF.USO4,                   # USO4 only with USO6
    TunF.CSUM | TunF.TSO_ECN,                # ECN needs TSO4 or TSO6
    0x8000,                                  # no such flag
])
def test_set_offload_refused_with_einval(ns: NetNS, flags: int) -> None:
    with ns.entered(), open_tap("vnoff") as tap:
        with pytest.raises(OSError) as info:
            set_offload(tap.fd, flags)
        assert info.value.errno == errno.EINVAL


def test_napi_flag(ns: NetNS) -> None:
    with ns.entered(), open_tap("vnnapi", napi=True) as tap:
        assert get_iff(tap.fd)[1] & Iff.NAPI


def test_multi_queue_attach_detach(ns: NetNS) -> None:
    with ns.entered():
        q0 = open_tap("vnmq", multi_queue=True)
        q1 = open_tap("vnmq", multi_queue=True)
    with q0, q1:
        assert q0.name == q1.name == "vnmq"
        assert get_iff(q1.fd)[1] & Iff.MULTI_QUEUE
        set_queue(q1.fd, attach=False)
        with pytest.raises(OSError) as info:
            set_queue(q1.fd, attach=False)       # already detached
        assert info.value.errno == errno.EINVAL
        set_queue(q1.fd, attach=True)


def test_single_queue_tap_refuses_a_second_open(ns: NetNS) -> None:
    with ns.entered(), open_tap("vnsq"):
        with pytest.raises(OSError) as info:
            open_tap("vnsq")
        assert info.value.errno == errno.EBUSY


def test_persist(ns: NetNS) -> None:
    with ns.entered():
        tap = open_tap("vnpersist")
        set_persist(tap.fd, True)
        tap.close()
        assert "vnpersist" in _links(ns)
        again = open_tap("vnpersist")
        set_persist(again.fd, False)
        again.close()
    assert "vnpersist" not in _links(ns)


def test_name_too_long() -> None:
    with pytest.raises(ValueError):
        open_tap("x" * 16)


def test_ioctl_on_a_non_tun_fd_gives_errno() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            get_vnet_hdr_sz(fd)
        assert info.value.errno in (errno.ENOTTY, errno.EINVAL, errno.EBADFD)
    finally:
        os.close(fd)


def test_close_is_idempotent(ns: NetNS) -> None:
    with ns.entered():
        tap = open_tap("vnclose")
    tap.close()
    tap.close()
    with pytest.raises(OSError) as info:
        get_iff(tap.fd)
    assert info.value.errno == errno.EBADF
