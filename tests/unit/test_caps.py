"""vmdnet.tun.caps: the feature/offload translation, against the kernel's rules."""

from __future__ import annotations

import pytest

from vmdnet.tun import caps
from vmdnet.virtio import features as vf


def bits(*names: int) -> int:
    m = 0
    for n in names:
        m |= 1 << n
    return m


GUEST_ALL = bits(vf.VIRTIO_NET_F_GUEST_CSUM, vf.VIRTIO_NET_F_GUEST_TSO4,
                 vf.VIRTIO_NET_F_GUEST_TSO6, vf.VIRTIO_NET_F_GUEST_ECN,
                 vf.VIRTIO_NET_F_GUEST_USO4, vf.VIRTIO_NET_F_GUEST_USO6)


def test_tun_constants_match_kernel_headers():
    from vmdnet._native import lib
    for name in ("TUN_F_CSUM", "TUN_F_TSO4", "TUN_F_TSO6", "TUN_F_TSO_ECN", "TUN_F_UFO",
                 "TUN_F_USO4", "TUN_F_USO6"):
        assert getattr(caps, name) == getattr(lib, name), name


def test_offers_all_host_offloads_even_without_vnet_hdr():
    f = caps.offered_features(caps.TapCaps(vnet_hdr=False))
    assert f & caps.HOST_OFFLOADS == caps.HOST_OFFLOADS
    assert not f & bits(vf.VIRTIO_NET_F_GUEST_TSO4, vf.VIRTIO_NET_F_GUEST_USO4)
    assert f & bits(vf.VIRTIO_F_VERSION_1, vf.VIRTIO_NET_F_MRG_RXBUF)


def test_full_tap_offers_guest_gso_but_never_guest_ufo():
    f = caps.offered_features(caps.TapCaps())
    assert f & GUEST_ALL == GUEST_ALL
    assert not f & bits(vf.VIRTIO_NET_F_GUEST_UFO)


def test_guest_gso_needs_csum():
    assert caps.tun_offload_flags(GUEST_ALL & ~bits(vf.VIRTIO_NET_F_GUEST_CSUM),
                                  caps.TapCaps()) == 0
    f = caps.offered_features(caps.TapCaps(offloads=frozenset({"tso4", "uso"})))
    assert not f & bits(vf.VIRTIO_NET_F_GUEST_TSO4, vf.VIRTIO_NET_F_GUEST_USO4)


def test_uso_only_together_and_ecn_needs_tso():
    c = caps.TapCaps()
    only4 = bits(vf.VIRTIO_NET_F_GUEST_CSUM, vf.VIRTIO_NET_F_GUEST_USO4)
    assert caps.tun_offload_flags(only4, c) == caps.TUN_F_CSUM
    ecn_only = bits(vf.VIRTIO_NET_F_GUEST_CSUM, vf.VIRTIO_NET_F_GUEST_ECN)
    assert caps.tun_offload_flags(ecn_only, c) == caps.TUN_F_CSUM
    assert caps.tun_offload_flags(GUEST_ALL, c) == 0x7F & ~caps.TUN_F_UFO


def test_restricted_offloads_shape_tx_plan():
    plan = caps.tx_plan(caps.TapCaps(offloads=caps.parse_offloads("csum,tso4")))
    assert plan.csum and plan.gso_types == {1}
    assert plan.gso_mask == 1 << 1
    assert caps.tx_plan(caps.TapCaps(vnet_hdr=False)).gso_types == frozenset()
    assert not caps.tx_plan(caps.TapCaps(vnet_hdr=False)).csum


def test_parse_offloads():
    assert caps.parse_offloads("tso, csum") == {"tso4", "tso6", "csum"}
    assert caps.parse_offloads("all") == caps.ALL_OFFLOADS
    assert caps.parse_offloads("none") == frozenset()
    with pytest.raises(ValueError):
        caps.parse_offloads("csum,warp")
